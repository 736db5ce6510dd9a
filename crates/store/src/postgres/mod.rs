//! The shared backend: one PostgreSQL database behind several chat servers.
//!
//! Unlike the SQLite backend, nothing here may assume it is the only
//! writer: every server runs its own [`PostgresStore`] against the same
//! database, so every invariant is kept by PostgreSQL itself, never by a
//! lock or a queue inside this process.
//!
//! - **Gap-free seqs.** `append_message` runs one short transaction that
//!   bumps `conversations.last_seq` (`UPDATE … RETURNING`) and inserts the
//!   message in the same statement. The row lock taken by the `UPDATE`
//!   serialises concurrent senders on any server; a rollback undoes the
//!   increment with the message, so no seq is ever skipped.
//! - **Idempotent retries.** `(sender, client_msg_id)` is unique. A retry
//!   finds the original first; two identical retries racing each other both
//!   try to insert, one gets the unique violation, rolls back (undoing its
//!   seq) and answers the original with `duplicate = true`.
//! - **One direct conversation per pair.** It is created with
//!   `INSERT … ON CONFLICT (direct_key) DO NOTHING` and then read back, so
//!   two servers creating it at once agree on one id.
//! - **Group membership.** A change of a group locks its conversation row
//!   first (`FOR NO KEY UPDATE`, which also waits for sends in flight), so
//!   changes of one group are serialised and read the members as they are;
//!   its event takes the next seq with the same `UPDATE … RETURNING` as a
//!   send. Adding users also locks their `users` rows, in username order,
//!   before counting their groups, so no race lets a user or a group past
//!   its limit. A send checks membership again under the row lock, so a
//!   member removed meanwhile posts nothing after the removal.
//! - **Edits and deletions.** `change_message` locks the conversation row
//!   first (`FOR NO KEY UPDATE`, like a membership change), checks for a
//!   retry under the lock, changes the sender's own live text message and
//!   appends its event with the next seq, all in one transaction. Changes
//!   of one message are thus serialised across servers: of two deletions,
//!   one commits and the other finds no live message.
//! - **Retention.** `delete_messages_before` deletes a bounded batch of
//!   the oldest messages in one short statement, skipping rows another
//!   server's pass holds; `conversations.last_seq` is left alone, so a seq
//!   is never handed out twice.
//! - **Acknowledged means committed.** Every write returns only after its
//!   `COMMIT` answered. An error is [`StoreError::Unavailable`] when the
//!   database cannot be reached, answers too slowly, or asks to retry
//!   (deadlock, serialisation, shutdown); the caller may retry, and a retry
//!   of a send is safe because of the idempotency key. (A connection lost
//!   during `COMMIT` itself leaves the outcome unknown to us; the retry then
//!   answers the original.)
//!
//! Connections come from a `deadpool-postgres` pool: it hands out
//! connections with a per-connection cache of prepared statements, replaces
//! closed ones, and bounds the wait for a free one, which is exactly what a
//! hand-written pool would have to do. `connect` is eager: it opens a
//! connection and runs the migrations, so a server whose database is
//! unreachable fails at start. After that every operation gets a connection
//! from the pool when it runs, so an outage makes operations answer
//! [`StoreError::Unavailable`] and the store recovers by itself once the
//! database is back.
//!
//! Migrations are numbered, recorded in `schema_migrations`, and applied in
//! one transaction that holds `pg_advisory_xact_lock`, so servers starting
//! together apply each migration exactly once and none sees half a schema.
//!
//! # Layout
//!
//! - `mod.rs`: configuration, the pool, [`PostgresStore::run`] (a pooled
//!   connection, the operation timeout, failure counting, keys holding
//!   NUL), error mapping, statement helpers.
//! - `schema.rs`: migrations.
//! - `users.rs`, `messages.rs`, `groups.rs`, `dead_letters.rs`: the SQL of
//!   each domain and its trait. The rules of groups are not here but in
//!   [`crate::domain`]; `groups.rs` gives them their primitives.
//!
//! Text columns that are compared or ordered use the "C" collation, so
//! ordering is bytewise like SQLite's. PostgreSQL cannot store NUL
//! characters in text: such input answers [`StoreError::Invalid`] when it
//! would be stored, and not-found when it is only looked up.

mod dead_letters;
mod groups;
mod messages;
mod schema;
mod users;

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use deadpool_postgres::{
    GenericClient, Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
    TimeoutType,
};
use tokio::time::error::Elapsed;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use crate::domain::messages::from_body_column;
use crate::{Failures, MessageKind, Result, StoreError, StoreHealth, StoredMessage};
use schema::migrate;

/// Settings of the PostgreSQL backend.
#[derive(Clone)]
pub struct PostgresConfig {
    /// A libpq-style connection string, as a URL
    /// (`postgres://user:password@host:5432/dbname`) or as `key=value`
    /// pairs. TLS is not supported: use `sslmode=disable` or `prefer`.
    pub url: String,
    /// The most connections this store keeps open at once.
    pub pool_size: usize,
    /// How long opening one connection may take.
    pub connect_timeout: Duration,
    /// How long an operation waits for a free connection when all
    /// `pool_size` are busy before it answers `Unavailable`.
    pub acquire_timeout: Duration,
    /// How long one operation (all its statements, its commit included) may
    /// take once it has a connection; also set as the session's
    /// `statement_timeout`. Past it the connection is closed, the database
    /// rolls back, and the caller gets `Unavailable`.
    pub operation_timeout: Duration,
}

impl PostgresConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(10),
        }
    }
}

impl fmt::Debug for PostgresConfig {
    /// Never shows the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &redact(&self.url))
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .finish()
    }
}

/// `url` with any password replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // key=value pairs
        return url
            .split_whitespace()
            .map(|pair| match pair.split_once('=') {
                Some(("password", _)) => "password=***".to_owned(),
                _ => pair.to_owned(),
            })
            .collect::<Vec<_>>()
            .join(" ");
    };
    // postgres://user:password@host:port/db?password=…
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let query = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some(("password", _)) => "password=***",
            _ => pair,
        })
        .collect::<Vec<_>>()
        .join("&");
    let query = if query.is_empty() {
        query
    } else {
        format!("?{query}")
    };
    format!("{scheme}://{authority}{path}{query}")
}

/// The PostgreSQL store. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    operation_timeout: Duration,
    failures: std::sync::Arc<Failures>,
}

impl PostgresStore {
    /// Builds the pool, opens one connection and brings the schema up to
    /// date. Fails with [`StoreError::Unavailable`] when the database cannot
    /// be reached within `connect_timeout`, and [`StoreError::Invalid`] when
    /// `url` does not parse.
    pub async fn connect(config: PostgresConfig) -> Result<Self> {
        let mut pg: tokio_postgres::Config = config
            .url
            .parse()
            .map_err(|e| StoreError::Invalid(format!("invalid PostgreSQL URL: {e}")))?;
        pg.connect_timeout(config.connect_timeout);
        if pg.get_application_name().is_none() {
            pg.application_name("chat-store");
        }
        // The server stops a statement that runs past the operation timeout
        // on its own, releasing its locks even if this process is gone.
        let statement_timeout = format!(
            "-c statement_timeout={}",
            config.operation_timeout.as_millis().max(1)
        );
        let options = match pg.get_options() {
            Some(options) if !options.is_empty() => format!("{options} {statement_timeout}"),
            _ => statement_timeout,
        };
        pg.options(options);

        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                // A closed connection is noticed without a round trip; one
                // that dies silently fails its next operation as
                // `Unavailable` and is then dropped.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.acquire_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.connect_timeout))
            .build()
            .map_err(|e| StoreError::Internal(format!("cannot build the pool: {e}")))?;

        let store = Self {
            pool,
            operation_timeout: config.operation_timeout,
            failures: Default::default(),
        };
        let mut client = store.client().await?;
        migrate(&mut client).await?;
        Ok(store)
    }

    /// Runs `op` on a pooled connection within the operation timeout, and
    /// counts a failure of the backend in [`StoreHealth::failures`]. A
    /// key holding NUL names nothing PostgreSQL can store (text cannot hold
    /// it): the answer is `NotFound`, without a round trip.
    async fn run<T>(
        &self,
        keys: &[&str],
        op: impl AsyncFnOnce(&mut Object) -> Result<T>,
    ) -> Result<T> {
        if keys.iter().any(|k| has_nul(k)) {
            return Err(StoreError::NotFound);
        }
        let mut client = self.client().await?;
        let outcome = tokio::time::timeout(self.operation_timeout, op(&mut client)).await;
        self.settle(client, outcome)
    }

    /// A pooled connection; failing to get one is counted in
    /// [`StoreHealth::failures`].
    async fn client(&self) -> Result<Object> {
        self.failures
            .note(self.pool.get().await.map_err(pool_error))
    }

    /// Turns the outcome of an operation run on `client` under
    /// `tokio::time::timeout` into its answer, counted in
    /// [`StoreHealth::failures`] if the backend failed it.
    fn settle<T>(&self, client: Object, outcome: Result<Result<T>, Elapsed>) -> Result<T> {
        self.failures.note(self.settle_uncounted(client, outcome))
    }

    fn settle_uncounted<T>(
        &self,
        client: Object,
        outcome: Result<Result<T>, Elapsed>,
    ) -> Result<T> {
        match outcome {
            Ok(result) => result,
            Err(_) => {
                // The connection may be in the middle of a statement or a
                // transaction: close it instead of returning it to the pool.
                // The server rolls back whatever was not committed.
                drop(Object::take(client));
                Err(StoreError::Unavailable(format!(
                    "the database did not answer within {:?}",
                    self.operation_timeout
                )))
            }
        }
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        if let Some(db) = e.as_db_error() {
            let code = db.code();
            if *code == SqlState::UNIQUE_VIOLATION {
                return StoreError::AlreadyExists;
            }
            if *code == SqlState::FOREIGN_KEY_VIOLATION {
                // Only a user that does not exist can break a reference.
                return StoreError::NotFound;
            }
            if *code == SqlState::CHARACTER_NOT_IN_REPERTOIRE {
                return StoreError::Invalid("text must not contain NUL characters".into());
            }
            let retryable = matches!(
                code.code().get(..2),
                // connection exception, insufficient resources,
                // operator intervention (shutdown, query cancelled by
                // statement_timeout), transaction rollback (serialisation,
                // deadlock)
                Some("08" | "53" | "57" | "40")
            ) || *code == SqlState::LOCK_NOT_AVAILABLE
                || *code == SqlState::READ_ONLY_SQL_TRANSACTION;
            return if retryable {
                StoreError::Unavailable(format!("database: {db}"))
            } else {
                StoreError::Internal(format!("database: {db}"))
            };
        }
        let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
        if e.is_closed() || io {
            StoreError::Unavailable(format!("database connection: {}", chain(&e)))
        } else {
            StoreError::Internal(format!("database client: {}", chain(&e)))
        }
    }
}

/// Every failure to get a connection means the database cannot serve now.
fn pool_error(e: PoolError) -> StoreError {
    match e {
        PoolError::Timeout(TimeoutType::Wait) => {
            StoreError::Unavailable("every database connection is busy".into())
        }
        PoolError::Timeout(_) => {
            StoreError::Unavailable("timed out connecting to the database".into())
        }
        PoolError::Backend(e) => {
            StoreError::Unavailable(format!("cannot connect to the database: {}", chain(&e)))
        }
        PoolError::Closed => StoreError::Unavailable("the store is closed".into()),
        PoolError::PostCreateHook(e) => {
            StoreError::Unavailable(format!("cannot set up a database connection: {e}"))
        }
        PoolError::NoRuntimeSpecified => StoreError::Internal("the pool has no runtime".into()),
    }
}

/// `e` and its causes: "a: b: c".
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A transaction as the rules of [`crate::domain`] use it.
struct Tx<'a, 'c>(&'a deadpool_postgres::Transaction<'c>);

/// The answer "nothing" of a lookup whose key names nothing (see
/// [`PostgresStore::run`]): no user, no conversations, no contacts.
fn or_empty<T: Default>(result: Result<T>) -> Result<T> {
    match result {
        Err(StoreError::NotFound) => Ok(T::default()),
        other => other,
    }
}

pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// PostgreSQL text cannot hold NUL, so no stored key contains one.
pub(super) fn has_nul(s: &str) -> bool {
    s.contains('\0')
}

/// A seq from the caller as a BIGINT; beyond `i64::MAX` is the same as it.
pub(super) fn seq_param(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// A seq or count from the database (never negative).
pub(super) fn seq_value(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

// --------------------------------------------------------------- statements

pub(super) async fn query<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.query(&stmt, params).await?)
}

pub(super) async fn query_opt<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<Row>> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.query_opt(&stmt, params).await?)
}

pub(super) async fn execute<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.execute(&stmt, params).await?)
}

/// A message from eleven columns starting at `at`: id, conversation_id,
/// seq, sender, body, client_msg_id, sent_at_ms, kind, target_seq,
/// `edited_at_ms IS NOT NULL`, deleted.
pub(super) fn message_from_row(row: &Row, at: usize) -> Result<StoredMessage> {
    let kind = MessageKind::parse(row.try_get(at + 7)?);
    let (body, members) = from_body_column(kind, row.try_get(at + 4)?);
    Ok(StoredMessage {
        id: row.try_get(at)?,
        conversation_id: row.try_get(at + 1)?,
        seq: seq_value(row.try_get(at + 2)?),
        sender: row.try_get(at + 3)?,
        body,
        client_msg_id: row.try_get(at + 5)?,
        sent_at_unix_ms: row.try_get(at + 6)?,
        kind,
        target_seq: seq_value(row.try_get(at + 8)?),
        edited: row.try_get(at + 9)?,
        deleted: row.try_get(at + 10)?,
        members,
    })
}

pub(super) async fn is_member<C: GenericClient>(
    c: &C,
    username: &str,
    conversation_id: &str,
) -> Result<bool> {
    Ok(query_opt(
        c,
        "SELECT 1 FROM members WHERE conversation_id = $1 AND username = $2",
        &[&conversation_id, &username],
    )
    .await?
    .is_some())
}

pub(super) const MEMBERS: &str =
    "SELECT username FROM members WHERE conversation_id = $1 ORDER BY username";

pub(super) async fn members<C: GenericClient>(c: &C, conversation_id: &str) -> Result<Vec<String>> {
    usernames(query(c, MEMBERS, &[&conversation_id]).await?)
}

pub(super) fn usernames(rows: Vec<Row>) -> Result<Vec<String>> {
    rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
}

/// The message `$1` sent with `$2`: what a retry answers.
pub(super) const MESSAGE_BY_CLIENT_ID: &str =
    "SELECT id, conversation_id, seq, sender, body, client_msg_id, sent_at_ms, kind,
            target_seq, edited_at_ms IS NOT NULL, deleted
     FROM messages WHERE sender = $1 AND client_msg_id = $2";

pub(super) async fn message_by_client_id<C: GenericClient>(
    c: &C,
    sender: &str,
    client_msg_id: &str,
) -> Result<Option<StoredMessage>> {
    query_opt(c, MESSAGE_BY_CLIENT_ID, &[&sender, &client_msg_id])
        .await?
        .map(|r| message_from_row(&r, 0))
        .transpose()
}

#[async_trait]
#[async_trait]
impl StoreHealth for PostgresStore {
    /// `SELECT 1` on a pooled connection, within the operation timeout.
    async fn ping(&self) -> Result<()> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let outcome =
            tokio::time::timeout(self.operation_timeout, query(&client, "SELECT 1", &[])).await;
        self.settle_uncounted(client, outcome).map(drop)
    }

    fn failures(&self) -> u64 {
        self.failures.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_passwords() {
        for (url, shown) in [
            (
                "postgres://chat:s3cret@db:5432/chat?sslmode=disable",
                "postgres://chat:***@db:5432/chat?sslmode=disable",
            ),
            (
                "postgres://chat@db/chat?password=s3cret&x=1",
                "postgres://chat@db/chat?password=***&x=1",
            ),
            ("postgres://db", "postgres://db"),
            (
                "host=db user=chat password=s3cret",
                "host=db user=chat password=***",
            ),
        ] {
            assert_eq!(redact(url), shown);
            let debug = format!("{:?}", PostgresConfig::new(url));
            assert!(!debug.contains("s3cret"), "{debug}");
        }
    }

    #[test]
    fn seqs_outside_bigint_are_clamped() {
        assert_eq!(seq_param(u64::MAX), i64::MAX);
        assert_eq!(seq_param(7), 7);
        assert_eq!(seq_value(-1), 0);
    }
}

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
//! The dead-letter queue lives in `postgres/dead_letters.rs`.
//!
//! Text columns that are compared or ordered use the "C" collation, so
//! ordering is bytewise like SQLite's. PostgreSQL cannot store NUL
//! characters in text: such input answers [`StoreError::Invalid`] when it
//! would be stored, and not-found when it is only looked up.

mod dead_letters;

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

use crate::new_id;
use crate::{
    Appended, ConversationKind, ConversationSummary, GroupChange, GroupChanged, GroupInfo,
    GroupLimits, GroupMember, GroupRole, GroupStore, HistoryPage, HistoryQuery, MessageChange,
    MessageKind, MessageStore, NewMessage, NewUser, ReadCursor, Result, StoreError, StoredMessage,
    Target, UserProfile, UserStore, MAX_PAGE,
};
use crate::{Failures, StoreHealth};

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

/// The schema, one entry per version. Never edit an applied migration: add
/// one. Each runs in the single migrating transaction, so no
/// `CREATE INDEX CONCURRENTLY` here.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE users (
    username      TEXT COLLATE "C" PRIMARY KEY,
    name          TEXT NOT NULL,
    phone         TEXT NOT NULL,
    token_hash    BYTEA NOT NULL UNIQUE,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE conversations (
    id            TEXT COLLATE "C" PRIMARY KEY,
    kind          TEXT NOT NULL CHECK (kind IN ('direct', 'group')),
    -- 'alice|bob' (sorted) for a direct conversation, NULL for a group.
    direct_key    TEXT COLLATE "C" UNIQUE,
    last_seq      BIGINT NOT NULL DEFAULT 0,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE members (
    conversation_id TEXT COLLATE "C" NOT NULL REFERENCES conversations(id),
    username        TEXT COLLATE "C" NOT NULL REFERENCES users(username),
    read_seq        BIGINT NOT NULL DEFAULT 0,
    delivered_seq   BIGINT NOT NULL DEFAULT 0,
    joined_seq      BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (conversation_id, username)
);
CREATE INDEX members_by_user ON members (username, conversation_id);

CREATE TABLE messages (
    conversation_id TEXT COLLATE "C" NOT NULL REFERENCES conversations(id),
    seq             BIGINT NOT NULL,
    id              TEXT COLLATE "C" NOT NULL UNIQUE,
    sender          TEXT COLLATE "C" NOT NULL,
    body            TEXT NOT NULL,
    client_msg_id   TEXT COLLATE "C" NOT NULL,
    sent_at_ms      BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, seq),
    UNIQUE (sender, client_msg_id)
);
"#,
    // Groups: a member's standing, what a message is (text or a membership
    // event), and a group's name (NULL for a direct conversation).
    r#"
ALTER TABLE members ADD COLUMN role TEXT NOT NULL DEFAULT 'member'
    CHECK (role IN ('member', 'admin', 'owner'));
ALTER TABLE messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'text';
ALTER TABLE conversations ADD COLUMN name TEXT;
"#,
    // The dead-letter queue. An identity value is never reused, even after
    // a purge, so an id an operator noted never names another letter.
    r#"
CREATE TABLE dead_letters (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    node            TEXT NOT NULL,
    reason          TEXT NOT NULL,
    payload         BYTEA NOT NULL,
    created_at_ms   BIGINT NOT NULL,
    replayed_at_ms  BIGINT,
    replay_attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX dead_letters_pending ON dead_letters (id) WHERE replayed_at_ms IS NULL;
CREATE INDEX dead_letters_by_time ON dead_letters (created_at_ms);
"#,
    // Edits and deletions: an edit or delete event names the message it
    // changed; a changed message records when it was last edited (NULL:
    // never) and whether it was deleted (its body is then empty).
    r#"
ALTER TABLE messages ADD COLUMN target_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN edited_at_ms BIGINT;
ALTER TABLE messages ADD COLUMN deleted BOOLEAN NOT NULL DEFAULT FALSE;
"#,
    // Retention: messages by the time they were sent, so that finding the
    // oldest is a range of an index, not a scan of every message.
    r#"
CREATE INDEX messages_by_time ON messages (sent_at_ms);
"#,
];

/// The key of the advisory lock held while migrating ("chat-mig").
const MIGRATION_LOCK: i64 = 0x6368_6174_2d6d_6967;

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

async fn migrate(client: &mut Object) -> Result<()> {
    let tx = client.transaction().await?;
    // Waiting for another server's migration is not a slow statement.
    tx.batch_execute("SET LOCAL statement_timeout = 0").await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version       BIGINT PRIMARY KEY,
             applied_at_ms BIGINT NOT NULL
         )",
    )
    .await?;
    let current: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_migrations",
            &[],
        )
        .await?
        .try_get(0)?;
    let current = usize::try_from(current).unwrap_or(0);
    if current > MIGRATIONS.len() {
        tracing::warn!(
            database = current,
            known = MIGRATIONS.len(),
            "the database schema is newer than this server"
        );
    }
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(current) {
        let version = i as i64 + 1;
        tx.batch_execute(migration).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at_ms) VALUES ($1, $2)",
            &[&version, &now_ms()],
        )
        .await?;
        tracing::info!(version, "applied store migration");
    }
    // Committing releases the advisory lock.
    tx.commit().await?;
    Ok(())
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

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// PostgreSQL text cannot hold NUL, so no stored key contains one.
fn has_nul(s: &str) -> bool {
    s.contains('\0')
}

/// A seq from the caller as a BIGINT; beyond `i64::MAX` is the same as it.
fn seq_param(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// A seq or count from the database (never negative).
fn seq_value(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

// --------------------------------------------------------------- statements

async fn query<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.query(&stmt, params).await?)
}

async fn query_opt<C: GenericClient>(
    c: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<Row>> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.query_opt(&stmt, params).await?)
}

async fn execute<C: GenericClient>(
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
fn message_from_row(row: &Row, at: usize) -> Result<StoredMessage> {
    let kind: String = row.try_get(at + 7)?;
    Ok(StoredMessage {
        id: row.try_get(at)?,
        conversation_id: row.try_get(at + 1)?,
        seq: seq_value(row.try_get(at + 2)?),
        sender: row.try_get(at + 3)?,
        body: row.try_get(at + 4)?,
        client_msg_id: row.try_get(at + 5)?,
        sent_at_unix_ms: row.try_get(at + 6)?,
        kind: MessageKind::parse(&kind),
        target_seq: seq_value(row.try_get(at + 8)?),
        edited: row.try_get(at + 9)?,
        deleted: row.try_get(at + 10)?,
    })
}

async fn is_member<C: GenericClient>(c: &C, username: &str, conversation_id: &str) -> Result<bool> {
    Ok(query_opt(
        c,
        "SELECT 1 FROM members WHERE conversation_id = $1 AND username = $2",
        &[&conversation_id, &username],
    )
    .await?
    .is_some())
}

const MEMBERS: &str = "SELECT username FROM members WHERE conversation_id = $1 ORDER BY username";

async fn members<C: GenericClient>(c: &C, conversation_id: &str) -> Result<Vec<String>> {
    usernames(query(c, MEMBERS, &[&conversation_id]).await?)
}

fn usernames(rows: Vec<Row>) -> Result<Vec<String>> {
    rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
}

/// The message `$1` sent with `$2`: what a retry answers.
const MESSAGE_BY_CLIENT_ID: &str =
    "SELECT id, conversation_id, seq, sender, body, client_msg_id, sent_at_ms, kind,
            target_seq, edited_at_ms IS NOT NULL, deleted
     FROM messages WHERE sender = $1 AND client_msg_id = $2";

async fn message_by_client_id<C: GenericClient>(
    c: &C,
    sender: &str,
    client_msg_id: &str,
) -> Result<Option<StoredMessage>> {
    query_opt(c, MESSAGE_BY_CLIENT_ID, &[&sender, &client_msg_id])
        .await?
        .map(|r| message_from_row(&r, 0))
        .transpose()
}

// ------------------------------------------------------------------- reads

async fn get_user(c: &Object, username: &str) -> Result<Option<UserProfile>> {
    let row = query_opt(
        c,
        "SELECT username, name, phone, created_at_ms FROM users WHERE username = $1",
        &[&username],
    )
    .await?;
    row.map(|r| {
        Ok(UserProfile {
            username: r.try_get(0)?,
            name: r.try_get(1)?,
            phone: r.try_get(2)?,
            created_at_unix_ms: r.try_get(3)?,
        })
    })
    .transpose()
}

async fn user_by_token_hash(c: &Object, token_hash: &[u8; 32]) -> Result<Option<String>> {
    let hash: &[u8] = token_hash;
    query_opt(
        c,
        "SELECT username FROM users WHERE token_hash = $1",
        &[&hash],
    )
    .await?
    .map(|r| Ok(r.try_get(0)?))
    .transpose()
}

async fn history(
    c: &Object,
    username: &str,
    conversation_id: &str,
    q: HistoryQuery,
) -> Result<HistoryPage> {
    let limit = match q.limit {
        0 => 50,
        n => n.min(MAX_PAGE),
    };
    let after = seq_param(q.after_seq.unwrap_or(0));
    let before = q.before_seq.map_or(i64::MAX, seq_param);
    // One more row than asked tells whether there is more.
    let fetch = i64::from(limit) + 1;
    let forward = q.after_seq.is_some();
    // A member reads from the seq they joined at on (0 in a direct
    // conversation, the event that added them in a group).
    let sql = if forward {
        "SELECT g.id, g.conversation_id, g.seq, g.sender, g.body, g.client_msg_id,
                g.sent_at_ms, g.kind, g.target_seq, g.edited_at_ms IS NOT NULL, g.deleted
         FROM members m
         JOIN messages g ON g.conversation_id = m.conversation_id
         WHERE m.conversation_id = $1 AND m.username = $5
           AND g.seq > $2 AND g.seq < $3 AND g.seq >= m.joined_seq
         ORDER BY g.seq ASC LIMIT $4"
    } else {
        "SELECT g.id, g.conversation_id, g.seq, g.sender, g.body, g.client_msg_id,
                g.sent_at_ms, g.kind, g.target_seq, g.edited_at_ms IS NOT NULL, g.deleted
         FROM members m
         JOIN messages g ON g.conversation_id = m.conversation_id
         WHERE m.conversation_id = $1 AND m.username = $5
           AND g.seq > $2 AND g.seq < $3 AND g.seq >= m.joined_seq
         ORDER BY g.seq DESC LIMIT $4"
    };
    // Both statements go out in one round trip.
    let params: [&(dyn ToSql + Sync); 5] = [&conversation_id, &after, &before, &fetch, &username];
    let (member, rows) = tokio::join!(
        is_member(c, username, conversation_id),
        query(c, sql, &params),
    );
    if !member? {
        return Err(StoreError::NotFound);
    }
    let mut messages = rows?
        .iter()
        .map(|r| message_from_row(r, 0))
        .collect::<Result<Vec<_>>>()?;
    if !forward {
        messages.reverse();
    }
    let has_more = messages.len() > limit as usize;
    if has_more {
        if forward {
            messages.truncate(limit as usize);
        } else {
            messages.remove(0);
        }
    }
    Ok(HistoryPage { messages, has_more })
}

async fn conversations(c: &Object, username: &str) -> Result<Vec<ConversationSummary>> {
    // One statement, one snapshot: last_seq, the last message and the
    // unread count always agree.
    const SQL: &str = "
        SELECT c.id, c.kind, c.last_seq, m.read_seq, m.delivered_seq,
               CASE WHEN c.kind = 'direct' THEN
                   (SELECT o.username FROM members o
                     WHERE o.conversation_id = c.id AND o.username <> m.username
                     ORDER BY o.username LIMIT 1)
               END,
               (SELECT COUNT(*) FROM messages u
                 WHERE u.conversation_id = c.id AND u.seq > m.read_seq
                   AND u.sender <> m.username AND u.kind = 'text' AND NOT u.deleted),
               c.name,
               l.id, l.conversation_id, l.seq, l.sender, l.body, l.client_msg_id, l.sent_at_ms,
               l.kind, l.target_seq, l.edited_at_ms IS NOT NULL, l.deleted
        FROM members m
        JOIN conversations c ON c.id = m.conversation_id
        LEFT JOIN messages l ON l.conversation_id = c.id AND l.seq = c.last_seq
        WHERE m.username = $1";
    let rows = query(c, SQL, &[&username]).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let kind: String = r.try_get(1)?;
        let kind = if kind == "group" {
            ConversationKind::Group
        } else {
            ConversationKind::Direct
        };
        let other: Option<String> = r.try_get(5)?;
        let name: Option<String> = r.try_get(7)?;
        let last_id: Option<String> = r.try_get(8)?;
        out.push(ConversationSummary {
            id: r.try_get(0)?,
            kind,
            name: (kind == ConversationKind::Group).then_some(name).flatten(),
            peer: (kind == ConversationKind::Direct)
                .then_some(other)
                .flatten(),
            last_seq: seq_value(r.try_get(2)?),
            read_seq: seq_value(r.try_get(3)?),
            delivered_seq: seq_value(r.try_get(4)?),
            unread_count: seq_value(r.try_get(6)?),
            last_message: match last_id {
                Some(_) => Some(message_from_row(r, 8)?),
                None => None,
            },
        });
    }
    out.sort_by(|a, b| {
        let at = |c: &ConversationSummary| c.last_message.as_ref().map_or(0, |m| m.sent_at_unix_ms);
        at(b).cmp(&at(a)).then_with(|| a.id.cmp(&b.id))
    });
    Ok(out)
}

async fn members_of(c: &Object, username: &str, conversation_id: &str) -> Result<Vec<String>> {
    let (member, list) = tokio::join!(
        is_member(c, username, conversation_id),
        members(c, conversation_id),
    );
    if !member? {
        return Err(StoreError::NotFound);
    }
    list
}

async fn read_cursors(
    c: &Object,
    username: &str,
    conversation_id: &str,
) -> Result<Vec<(String, u64)>> {
    const SQL: &str = "SELECT username, read_seq FROM members
                       WHERE conversation_id = $1 ORDER BY username";
    if !is_member(c, username, conversation_id).await? {
        return Err(StoreError::NotFound);
    }
    query(c, SQL, &[&conversation_id])
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, seq_value(r.try_get(1)?))))
        .collect()
}

// ------------------------------------------------------------------ writes

async fn create_user(c: &Object, user: NewUser) -> Result<UserProfile> {
    if has_nul(&user.username) || has_nul(&user.name) || has_nul(&user.phone) {
        return Err(StoreError::Invalid(
            "text must not contain NUL characters".into(),
        ));
    }
    let now = now_ms();
    let hash: &[u8] = &user.token_hash;
    execute(
        c,
        "INSERT INTO users (username, name, phone, token_hash, created_at_ms)
         VALUES ($1, $2, $3, $4, $5)",
        &[&user.username, &user.name, &user.phone, &hash, &now],
    )
    .await?;
    Ok(UserProfile {
        username: user.username,
        name: user.name,
        phone: user.phone,
        created_at_unix_ms: now,
    })
}

/// Where a message goes, once its target is looked at.
enum Resolved {
    Conversation(String),
    /// A direct conversation not created yet.
    NewDirect {
        key: String,
        peer: String,
    },
}

async fn append(client: &mut Object, msg: NewMessage) -> Result<Appended> {
    // Nothing stored can match a key holding NUL: there is no original to
    // find, and the message cannot be stored.
    if has_nul(&msg.sender) {
        return Err(StoreError::NotFound);
    }
    if has_nul(&msg.client_msg_id) {
        return Err(StoreError::Invalid(
            "client_msg_id must not contain NUL characters".into(),
        ));
    }
    let now = now_ms();
    let tx = client.transaction().await?;

    // The retry check and the target lookup go out in one round trip.
    let existing = message_by_client_id(&tx, &msg.sender, &msg.client_msg_id);
    let (existing, target) = match &msg.target {
        Target::Direct(peer) if *peer == msg.sender => (existing.await?, Err(invalid_self())),
        Target::Direct(peer) if has_nul(peer) => (existing.await?, Err(StoreError::NotFound)),
        Target::Direct(peer) => {
            let key = direct_key(&msg.sender, peer);
            let params: [&(dyn ToSql + Sync); 1] = [&key];
            let lookup = query_opt(
                &tx,
                "SELECT id FROM conversations WHERE direct_key = $1",
                &params,
            );
            let (existing, found) = tokio::join!(existing, lookup);
            let target = match found? {
                Some(row) => Ok(Resolved::Conversation(row.try_get(0)?)),
                None => Ok(Resolved::NewDirect {
                    key,
                    peer: peer.clone(),
                }),
            };
            (existing?, target)
        }
        Target::Group(group) if has_nul(group) => (existing.await?, Err(StoreError::NotFound)),
        Target::Group(group) => {
            let (existing, member) = tokio::join!(existing, is_member(&tx, &msg.sender, group));
            let target = if member? {
                Ok(Resolved::Conversation(group.clone()))
            } else {
                Err(StoreError::NotFound)
            };
            (existing?, target)
        }
    };
    if let Some(message) = existing {
        let members = members(&tx, &message.conversation_id).await?;
        tx.commit().await?;
        return Ok(Appended {
            message,
            members,
            duplicate: true,
        });
    }
    let conversation_id = match target? {
        Resolved::Conversation(id) => id,
        Resolved::NewDirect { key, peer } => {
            create_direct(&tx, &msg.sender, &peer, &key, now).await?
        }
    };
    if has_nul(&msg.body) {
        return Err(StoreError::Invalid(
            "body must not contain NUL characters".into(),
        ));
    }

    let id = new_id('m');
    let kind = MessageKind::Text.as_str();
    let sent_at = msg.sent_at_unix_ms.unwrap_or(now);
    let params: [&(dyn ToSql + Sync); 8] = [
        &conversation_id,
        &id,
        &msg.sender,
        &msg.body,
        &msg.client_msg_id,
        &sent_at,
        &kind,
        &0i64,
    ];
    // The member list goes out right behind the insert, in one round trip
    // (one less while the row lock is held). Both statements are prepared
    // first so that polling sends them in this order and the server reads
    // the members after the insert, under the lock. The list counts only if
    // the insert succeeded.
    let (insert, list) = tokio::try_join!(
        tx.prepare_cached(INSERT_MESSAGE),
        tx.prepare_cached(MEMBERS)
    )?;
    let list_params: [&(dyn ToSql + Sync); 1] = [&conversation_id];
    let (inserted, member_list) = tokio::join!(
        tx.query_opt(&insert, &params),
        tx.query(&list, &list_params),
    );
    let inserted = inserted.map_err(StoreError::from);
    let seq = match inserted {
        Ok(Some(row)) => seq_value(row.try_get(0)?),
        Ok(None) => {
            return Err(StoreError::Internal(format!(
                "conversation {conversation_id} vanished"
            )))
        }
        Err(StoreError::AlreadyExists) => {
            // An identical retry committed first (or was waited for).
            // Undo this attempt, its seq included, and answer the original.
            tx.rollback().await?;
            let Some(message) =
                message_by_client_id(&*client, &msg.sender, &msg.client_msg_id).await?
            else {
                return Err(StoreError::Internal(
                    "a unique violation without an original message".into(),
                ));
            };
            let members = members(&*client, &message.conversation_id).await?;
            return Ok(Appended {
                message,
                members,
                duplicate: true,
            });
        }
        Err(e) => return Err(e),
    };
    let members = usernames(member_list?)?;
    // The membership check above ran before the lock: a member removed from
    // the group meanwhile (on any server) is not in the list read under it.
    if !members.contains(&msg.sender) {
        tx.rollback().await?;
        return Err(StoreError::NotFound);
    }
    tx.commit().await?;
    Ok(Appended {
        message: StoredMessage {
            id,
            conversation_id,
            seq,
            sender: msg.sender,
            body: msg.body,
            client_msg_id: msg.client_msg_id,
            sent_at_unix_ms: sent_at,
            kind: MessageKind::Text,
            target_seq: 0,
            edited: false,
            deleted: false,
        },
        members,
        duplicate: false,
    })
}

/// Takes the next seq of conversation `$1` and inserts the message with it
/// (`$8` is the target_seq: the changed message's seq for an edit or delete
/// event, 0 otherwise). The UPDATE's row lock serialises every writer of
/// the conversation (sends, edits and membership changes) until the commit,
/// and a rollback undoes the increment with the message, so seqs stay
/// gap-free. No row: no such conversation.
const INSERT_MESSAGE: &str = "
    WITH next AS (
        UPDATE conversations SET last_seq = last_seq + 1
        WHERE id = $1 RETURNING last_seq
    )
    INSERT INTO messages
        (conversation_id, seq, id, sender, body, client_msg_id, sent_at_ms, kind, target_seq)
    SELECT $1, next.last_seq, $2, $3, $4, $5, $6, $7, $8 FROM next
    RETURNING seq";

fn invalid_self() -> StoreError {
    StoreError::Invalid("a direct conversation needs two users".into())
}

/// `'alice|bob'`: the two usernames sorted bytewise.
fn direct_key(a: &str, b: &str) -> String {
    if a < b {
        format!("{a}|{b}")
    } else {
        format!("{b}|{a}")
    }
}

/// Creates the direct conversation of `a` and `b`, or finds the one another
/// transaction created meanwhile.
async fn create_direct<C: GenericClient>(
    tx: &C,
    a: &str,
    b: &str,
    key: &str,
    now: i64,
) -> Result<String> {
    if query_opt(tx, "SELECT 1 FROM users WHERE username = $1", &[&b])
        .await?
        .is_none()
    {
        return Err(StoreError::NotFound);
    }
    let id = new_id('c');
    // A concurrent creator of the same key makes this wait for its commit
    // and then do nothing.
    let created = query_opt(
        tx,
        "INSERT INTO conversations (id, kind, direct_key, created_at_ms)
         VALUES ($1, 'direct', $2, $3)
         ON CONFLICT (direct_key) DO NOTHING RETURNING id",
        &[&id, &key, &now],
    )
    .await?;
    if created.is_some() {
        execute(
            tx,
            "INSERT INTO members (conversation_id, username) VALUES ($1, $2), ($1, $3)",
            &[&id, &a, &b],
        )
        .await?;
        return Ok(id);
    }
    // Read committed: this statement sees the winner's committed row.
    match query_opt(
        tx,
        "SELECT id FROM conversations WHERE direct_key = $1",
        &[&key],
    )
    .await?
    {
        Some(row) => Ok(row.try_get(0)?),
        None => Err(StoreError::Unavailable(
            "the direct conversation is being created; retry".into(),
        )),
    }
}

async fn mark_read(
    c: &Object,
    username: &str,
    conversation_id: &str,
    seq: u64,
) -> Result<ReadCursor> {
    // Clamped to last_seq, forward only, the delivered cursor follows, and
    // the unread count is of the new cursor: one statement.
    const SQL: &str = "
        UPDATE members m
           SET read_seq = GREATEST(m.read_seq, LEAST($3::BIGINT, c.last_seq)),
               delivered_seq = GREATEST(m.delivered_seq, LEAST($3::BIGINT, c.last_seq))
          FROM conversations c
         WHERE m.conversation_id = $1 AND m.username = $2 AND c.id = m.conversation_id
        RETURNING m.read_seq,
                  (SELECT COUNT(*) FROM messages u
                    WHERE u.conversation_id = m.conversation_id AND u.seq > m.read_seq
                      AND u.sender <> m.username AND u.kind = 'text' AND NOT u.deleted)";
    let row = query_opt(c, SQL, &[&conversation_id, &username, &seq_param(seq)])
        .await?
        .ok_or(StoreError::NotFound)?;
    Ok(ReadCursor {
        read_seq: seq_value(row.try_get(0)?),
        unread_count: seq_value(row.try_get(1)?),
    })
}

async fn mark_delivered(
    c: &Object,
    username: &str,
    conversation_id: &str,
    seq: u64,
) -> Result<u64> {
    const SQL: &str = "
        UPDATE members m
           SET delivered_seq = GREATEST(m.delivered_seq, LEAST($3::BIGINT, c.last_seq))
          FROM conversations c
         WHERE m.conversation_id = $1 AND m.username = $2 AND c.id = m.conversation_id
        RETURNING m.delivered_seq";
    let row = query_opt(c, SQL, &[&conversation_id, &username, &seq_param(seq)])
        .await?
        .ok_or(StoreError::NotFound)?;
    Ok(seq_value(row.try_get(0)?))
}

// ------------------------------------------------------------------- edits

/// Locks conversation `$1` if `$2` is a member of it (a non-member locks
/// nothing). An edit or deletion takes this lock first, as a membership
/// change does: sends hold the same row lock (their `UPDATE` of last_seq),
/// so a change is serialised with every writer of the conversation, takes
/// its locks in the same order (the conversation first), and reads the
/// message and the members as they are.
const LOCK_CONVERSATION: &str = "
    SELECT 1 FROM conversations c
     WHERE c.id = $1
       AND EXISTS (SELECT 1 FROM members m WHERE m.conversation_id = c.id AND m.username = $2)
    FOR NO KEY UPDATE OF c";

/// Edits message `$2` of conversation `$1` to `$4` at `$5`, if it is live
/// text that `$3` sent and, as a member, may see. No row: nothing changed.
const EDIT_TARGET: &str = "
    UPDATE messages g SET body = $4, edited_at_ms = $5
      FROM members m
     WHERE g.conversation_id = $1 AND g.seq = $2 AND g.sender = $3
       AND g.kind = 'text' AND NOT g.deleted
       AND m.conversation_id = g.conversation_id AND m.username = $3
       AND g.seq >= m.joined_seq
    RETURNING g.seq";

/// Deletes message `$2` of conversation `$1` (keeping a tombstone with an
/// empty body), under the same conditions as [`EDIT_TARGET`].
const DELETE_TARGET: &str = "
    UPDATE messages g SET body = '', deleted = TRUE
      FROM members m
     WHERE g.conversation_id = $1 AND g.seq = $2 AND g.sender = $3
       AND g.kind = 'text' AND NOT g.deleted
       AND m.conversation_id = g.conversation_id AND m.username = $3
       AND g.seq >= m.joined_seq
    RETURNING g.seq";

async fn change_message(client: &mut Object, change: MessageChange) -> Result<Appended> {
    // As for sends: nothing stored matches a key holding NUL.
    if has_nul(&change.editor) {
        return Err(StoreError::NotFound);
    }
    if has_nul(&change.client_msg_id) {
        return Err(StoreError::Invalid(
            "client_msg_id must not contain NUL characters".into(),
        ));
    }
    let now = now_ms();
    let editor = change.editor.as_str();
    let key = change.client_msg_id.as_str();
    let conversation_id = change.conversation_id.as_str();
    let tx = client.transaction().await?;

    // The lock and the retry check go out in one round trip; the check runs
    // once the lock is granted, so it sees an identical change that
    // committed while this one waited for the lock.
    let (locked, existing) = if has_nul(conversation_id) {
        (false, message_by_client_id(&tx, editor, key).await?)
    } else {
        let (lock, by_key) = tokio::try_join!(
            tx.prepare_cached(LOCK_CONVERSATION),
            tx.prepare_cached(MESSAGE_BY_CLIENT_ID)
        )?;
        let lock_params: [&(dyn ToSql + Sync); 2] = [&conversation_id, &editor];
        let key_params: [&(dyn ToSql + Sync); 2] = [&editor, &key];
        let (locked, existing) = tokio::join!(
            tx.query_opt(&lock, &lock_params),
            tx.query_opt(&by_key, &key_params),
        );
        let locked = locked?.is_some();
        let existing = existing?.map(|r| message_from_row(&r, 0)).transpose()?;
        (locked, existing)
    };
    if let Some(message) = existing {
        let members = members(&tx, &message.conversation_id).await?;
        tx.commit().await?;
        return Ok(Appended {
            message,
            members,
            duplicate: true,
        });
    }
    if !locked {
        return Err(StoreError::NotFound);
    }
    let (kind, body) = match change.body.as_deref() {
        Some(text) => (MessageKind::MessageEdited, text),
        None => (MessageKind::MessageDeleted, ""),
    };
    if has_nul(body) {
        return Err(StoreError::Invalid(
            "body must not contain NUL characters".into(),
        ));
    }

    // The change of the target, the event and the member list go out in
    // one round trip, in this order (prepared first, as in `append`). The
    // event counts only if the target changed.
    let target_sql = match kind {
        MessageKind::MessageEdited => EDIT_TARGET,
        _ => DELETE_TARGET,
    };
    let (target, insert, list) = tokio::try_join!(
        tx.prepare_cached(target_sql),
        tx.prepare_cached(INSERT_MESSAGE),
        tx.prepare_cached(MEMBERS)
    )?;
    let target_seq = seq_param(change.seq);
    let edit_params: [&(dyn ToSql + Sync); 5] =
        [&conversation_id, &target_seq, &editor, &body, &now];
    let target_params = match kind {
        MessageKind::MessageEdited => &edit_params[..],
        _ => &edit_params[..3],
    };
    let id = new_id('m');
    let kind_name = kind.as_str();
    let event_params: [&(dyn ToSql + Sync); 8] = [
        &conversation_id,
        &id,
        &editor,
        &body,
        &key,
        &now,
        &kind_name,
        &target_seq,
    ];
    let list_params: [&(dyn ToSql + Sync); 1] = [&conversation_id];
    let (changed, inserted, member_list) = tokio::join!(
        tx.query_opt(&target, target_params),
        tx.query_opt(&insert, &event_params),
        tx.query(&list, &list_params),
    );
    if changed?.is_none() {
        // Not the editor's own live text message, or no message at all:
        // the same answer. Undo the event and its seq.
        tx.rollback().await?;
        return Err(StoreError::NotFound);
    }
    let seq = match inserted.map_err(StoreError::from) {
        Ok(Some(row)) => seq_value(row.try_get(0)?),
        Ok(None) => {
            return Err(StoreError::Internal(format!(
                "conversation {conversation_id} vanished"
            )))
        }
        Err(StoreError::AlreadyExists) => {
            // The key was used meanwhile for another conversation (changes
            // of this one wait for the lock and found nothing): undo this
            // attempt and answer the original, as `append` does.
            tx.rollback().await?;
            let Some(message) = message_by_client_id(&*client, editor, key).await? else {
                return Err(StoreError::Internal(
                    "a unique violation without an original message".into(),
                ));
            };
            let members = members(&*client, &message.conversation_id).await?;
            return Ok(Appended {
                message,
                members,
                duplicate: true,
            });
        }
        Err(e) => return Err(e),
    };
    let members = usernames(member_list?)?;
    tx.commit().await?;
    Ok(Appended {
        message: StoredMessage {
            id,
            conversation_id: change.conversation_id.clone(),
            seq,
            sender: change.editor.clone(),
            body: body.to_owned(),
            client_msg_id: change.client_msg_id.clone(),
            sent_at_unix_ms: now,
            kind,
            target_seq: change.seq,
            edited: false,
            deleted: false,
        },
        members,
        duplicate: false,
    })
}

// --------------------------------------------------------------- retention

/// Deletes at most `$2` messages sent before `$1`, oldest first (a range of
/// `messages_by_time`). Rows another server's pass has locked are skipped,
/// not waited for: passes of several servers delete disjoint batches, and
/// whatever one skips the other deletes. Only message rows are locked, so
/// this never waits for a send or a change of a conversation.
const DELETE_BEFORE: &str = "
    DELETE FROM messages WHERE (conversation_id, seq) IN
      (SELECT conversation_id, seq FROM messages
        WHERE sent_at_ms < $1 ORDER BY sent_at_ms LIMIT $2
        FOR UPDATE SKIP LOCKED)";

// ------------------------------------------------------------------ groups

/// Locks group `$1` if `$2` is a member of it (a non-member locks nothing).
/// Every membership change of a group takes this lock first (the row lock
/// of a send conflicts with it too), so membership changes of one group are
/// serialised across servers, and statements that follow see the members
/// as they are.
const LOCK_GROUP: &str = "
    SELECT c.name, c.last_seq FROM conversations c
     WHERE c.id = $1 AND c.kind = 'group'
       AND EXISTS (SELECT 1 FROM members m WHERE m.conversation_id = c.id AND m.username = $2)
    FOR NO KEY UPDATE OF c";

const GROUP_MEMBERS: &str = "
    SELECT username, role, joined_seq FROM members
     WHERE conversation_id = $1 ORDER BY username";

/// Locks the users `$1` in username order (so two changes never wait on
/// each other in a cycle). Membership changes that add users take these
/// locks before counting their groups, so two of them cannot both let a
/// user past the limit. `NO KEY UPDATE` does not block the key-share locks
/// of the foreign keys of `members`, so sends are never held up by it.
const LOCK_USERS: &str = "
    SELECT username FROM users WHERE username = ANY($1)
    ORDER BY username FOR NO KEY UPDATE";

/// The first of the users `$1` who is already in `$2` groups or more.
const FULL_USER: &str = "
    SELECT m.username FROM members m JOIN conversations c ON c.id = m.conversation_id
     WHERE m.username = ANY($1) AND c.kind = 'group'
     GROUP BY m.username HAVING COUNT(*) >= $2
     ORDER BY m.username LIMIT 1";

/// A group as locked by [`lock_group`].
struct LockedGroup {
    name: String,
    last_seq: u64,
    /// Sorted by username.
    members: Vec<GroupMember>,
}

impl LockedGroup {
    fn role_of(&self, username: &str) -> Option<GroupRole> {
        self.members
            .iter()
            .find(|m| m.username == username)
            .map(|m| m.role)
    }

    fn info(self, id: String) -> GroupInfo {
        GroupInfo {
            id,
            name: self.name,
            members: self.members,
            last_seq: self.last_seq,
        }
    }

    fn usernames(&self) -> Vec<String> {
        self.members.iter().map(|m| m.username.clone()).collect()
    }
}

fn group_member_from_row(row: &Row, at: usize) -> Result<GroupMember> {
    let role: String = row.try_get(at + 1)?;
    Ok(GroupMember {
        username: row.try_get(at)?,
        role: GroupRole::parse(&role),
        joined_seq: seq_value(row.try_get(at + 2)?),
    })
}

/// Locks `group_id` for a change by `actor` and reads its members under the
/// lock, in one round trip. A group that does not exist, or that `actor` is
/// not a member of, is not found.
async fn lock_group<C: GenericClient>(tx: &C, actor: &str, group_id: &str) -> Result<LockedGroup> {
    let (lock, list) = tokio::try_join!(
        tx.prepare_cached(LOCK_GROUP),
        tx.prepare_cached(GROUP_MEMBERS)
    )?;
    let lock_params: [&(dyn ToSql + Sync); 2] = [&group_id, &actor];
    let list_params: [&(dyn ToSql + Sync); 1] = [&group_id];
    let (locked, rows) = tokio::join!(
        tx.query_opt(&lock, &lock_params),
        tx.query(&list, &list_params),
    );
    let Some(row) = locked? else {
        return Err(StoreError::NotFound);
    };
    let name: Option<String> = row.try_get(0)?;
    let group = LockedGroup {
        name: name.unwrap_or_default(),
        last_seq: seq_value(row.try_get(1)?),
        members: rows?
            .iter()
            .map(|r| group_member_from_row(r, 0))
            .collect::<Result<_>>()?,
    };
    // The lock waited for any change that was under way: the list read
    // after it is what counts.
    if group.role_of(actor).is_none() {
        return Err(StoreError::NotFound);
    }
    Ok(group)
}

/// Locks `users` (sorted, distinct) and checks that they exist (else
/// `NotFound`), that a group of `group_size` members is allowed, and that
/// none of them is already in as many groups as allowed (else `Limit`).
async fn admit_users<C: GenericClient>(
    tx: &C,
    users: &[String],
    group_size: usize,
    limits: GroupLimits,
) -> Result<()> {
    let max_groups = i64::try_from(limits.max_groups_per_user).unwrap_or(i64::MAX);
    // The count is read after the locks, in a statement of its own, so it
    // sees every change committed by whoever held them before.
    let (lock, full) =
        tokio::try_join!(tx.prepare_cached(LOCK_USERS), tx.prepare_cached(FULL_USER))?;
    let lock_params: [&(dyn ToSql + Sync); 1] = [&users];
    let full_params: [&(dyn ToSql + Sync); 2] = [&users, &max_groups];
    let (found, full) = tokio::join!(
        tx.query(&lock, &lock_params),
        tx.query_opt(&full, &full_params),
    );
    if found?.len() != users.len() {
        return Err(StoreError::NotFound);
    }
    let full = full?;
    if group_size > limits.max_members {
        return Err(StoreError::Limit(format!(
            "a group has at most {} members",
            limits.max_members
        )));
    }
    if limits.max_groups_per_user == 0 {
        return Err(StoreError::Limit("no user may be in a group".into()));
    }
    if let Some(row) = full {
        let username: String = row.try_get(0)?;
        return Err(StoreError::Limit(format!(
            "{username} is already in {} groups",
            limits.max_groups_per_user
        )));
    }
    Ok(())
}

/// Commits nothing yet: inserts the membership event with the next seq of
/// `group_id` (see [`INSERT_MESSAGE`]).
async fn insert_event<C: GenericClient>(
    tx: &C,
    group_id: &str,
    sender: &str,
    kind: MessageKind,
    usernames: &[String],
    now: i64,
) -> Result<StoredMessage> {
    let id = new_id('m');
    // Unique per sender because the message id is.
    let client_msg_id = format!("event-{id}");
    let body = usernames.join(" ");
    let kind_name = kind.as_str();
    let row = query_opt(
        tx,
        INSERT_MESSAGE,
        &[
            &group_id,
            &id,
            &sender,
            &body,
            &client_msg_id,
            &now,
            &kind_name,
            &0i64,
        ],
    )
    .await?
    .ok_or_else(|| StoreError::Internal(format!("group {group_id} vanished")))?;
    Ok(StoredMessage {
        id,
        conversation_id: group_id.to_owned(),
        seq: seq_value(row.try_get(0)?),
        sender: sender.to_owned(),
        body,
        client_msg_id,
        sent_at_unix_ms: now,
        kind,
        target_seq: 0,
        edited: false,
        deleted: false,
    })
}

fn may_manage(role: Option<GroupRole>) -> Result<()> {
    match role {
        Some(GroupRole::Owner | GroupRole::Admin) => Ok(()),
        _ => Err(StoreError::Forbidden(
            "only the owner or an admin of the group may do this".into(),
        )),
    }
}

async fn change_group(
    client: &mut Object,
    change: GroupChange,
    limits: GroupLimits,
) -> Result<GroupChanged> {
    match change {
        GroupChange::Create {
            owner,
            name,
            members,
        } => create_group(client, owner, name, members, limits).await,
        GroupChange::Add {
            actor,
            group_id,
            usernames,
        } => add_members(client, actor, group_id, usernames, limits).await,
        GroupChange::Remove {
            actor,
            group_id,
            username,
        } if actor == username => leave_group(client, actor, group_id).await,
        GroupChange::Remove {
            actor,
            group_id,
            username,
        } => remove_member(client, actor, group_id, username).await,
    }
}

async fn create_group(
    client: &mut Object,
    owner: String,
    name: String,
    members: Vec<String>,
    limits: GroupLimits,
) -> Result<GroupChanged> {
    if has_nul(&owner) || members.iter().any(|m| has_nul(m)) {
        return Err(StoreError::NotFound);
    }
    if has_nul(&name) {
        return Err(StoreError::Invalid(
            "a group name must not contain NUL characters".into(),
        ));
    }
    let mut others: Vec<String> = members.into_iter().filter(|m| *m != owner).collect();
    others.sort();
    others.dedup();
    let mut everyone = others.clone();
    everyone.push(owner.clone());
    everyone.sort();
    let now = now_ms();
    let id = new_id('g');

    let tx = client.transaction().await?;
    admit_users(&tx, &everyone, everyone.len(), limits).await?;
    const CONVERSATION: &str = "
        INSERT INTO conversations (id, kind, name, last_seq, created_at_ms)
        VALUES ($1, 'group', $2, 1, $3)";
    const MEMBERS_OF_NEW: &str = "
        INSERT INTO members (conversation_id, username, role, joined_seq)
        SELECT $1::TEXT, u, CASE WHEN u = $3::TEXT THEN 'owner' ELSE 'member' END, 1
          FROM unnest($2::TEXT[]) AS u";
    const EVENT: &str = "
        INSERT INTO messages
            (conversation_id, seq, id, sender, body, client_msg_id, sent_at_ms, kind)
        VALUES ($1, 1, $2, $3, $4, $5, $6, $7)";
    let event = StoredMessage {
        id: new_id('m'),
        conversation_id: id.clone(),
        seq: 1,
        sender: owner.clone(),
        body: others.join(" "),
        client_msg_id: String::new(),
        sent_at_unix_ms: now,
        kind: MessageKind::GroupCreated,
        target_seq: 0,
        edited: false,
        deleted: false,
    };
    let event = StoredMessage {
        client_msg_id: format!("event-{}", event.id),
        ..event
    };
    let kind = event.kind.as_str();
    // The three inserts go out in one round trip, in this order.
    let (conversation, member_rows, event_row) = tokio::try_join!(
        tx.prepare_cached(CONVERSATION),
        tx.prepare_cached(MEMBERS_OF_NEW),
        tx.prepare_cached(EVENT),
    )?;
    let conversation_params: [&(dyn ToSql + Sync); 3] = [&id, &name, &now];
    let member_params: [&(dyn ToSql + Sync); 3] = [&id, &everyone, &owner];
    let event_params: [&(dyn ToSql + Sync); 7] = [
        &id,
        &event.id,
        &event.sender,
        &event.body,
        &event.client_msg_id,
        &now,
        &kind,
    ];
    let (a, b, c) = tokio::join!(
        tx.execute(&conversation, &conversation_params),
        tx.execute(&member_rows, &member_params),
        tx.execute(&event_row, &event_params),
    );
    a?;
    b?;
    c?;
    tx.commit().await?;

    let members = everyone
        .iter()
        .map(|username| GroupMember {
            username: username.clone(),
            role: if *username == owner {
                GroupRole::Owner
            } else {
                GroupRole::Member
            },
            joined_seq: 1,
        })
        .collect();
    Ok(GroupChanged {
        group: GroupInfo {
            id,
            name,
            members,
            last_seq: 1,
        },
        event: Some(event),
        notify: everyone,
    })
}

async fn add_members(
    client: &mut Object,
    actor: String,
    group_id: String,
    usernames: Vec<String>,
    limits: GroupLimits,
) -> Result<GroupChanged> {
    if has_nul(&actor) || has_nul(&group_id) {
        return Err(StoreError::NotFound);
    }
    let now = now_ms();
    let tx = client.transaction().await?;
    let mut group = lock_group(&tx, &actor, &group_id).await?;
    may_manage(group.role_of(&actor))?;
    if usernames.iter().any(|u| has_nul(u)) {
        return Err(StoreError::NotFound);
    }
    let mut new: Vec<String> = usernames
        .into_iter()
        .filter(|u| group.role_of(u).is_none())
        .collect();
    new.sort();
    new.dedup();
    if new.is_empty() {
        // Everyone listed is a member already: nothing changes.
        tx.commit().await?;
        let notify = group.usernames();
        return Ok(GroupChanged {
            group: group.info(group_id),
            event: None,
            notify,
        });
    }
    admit_users(&tx, &new, group.members.len() + new.len(), limits).await?;
    let event = insert_event(&tx, &group_id, &actor, MessageKind::MembersAdded, &new, now).await?;
    // New members read from the event on; nothing before it is theirs to
    // read or to be told about.
    const ADD: &str = "
        INSERT INTO members
            (conversation_id, username, role, joined_seq, read_seq, delivered_seq)
        SELECT $1::TEXT, u, 'member', $3::BIGINT, $3::BIGINT - 1, $3::BIGINT - 1
          FROM unnest($2::TEXT[]) AS u";
    let seq = seq_param(event.seq);
    execute(&tx, ADD, &[&group_id, &new, &seq]).await?;
    tx.commit().await?;

    group
        .members
        .extend(new.into_iter().map(|username| GroupMember {
            username,
            role: GroupRole::Member,
            joined_seq: event.seq,
        }));
    group.members.sort_by(|a, b| a.username.cmp(&b.username));
    group.last_seq = event.seq;
    let notify = group.usernames();
    Ok(GroupChanged {
        group: group.info(group_id),
        event: Some(event),
        notify,
    })
}

const DELETE_MEMBER: &str = "DELETE FROM members WHERE conversation_id = $1 AND username = $2";

async fn remove_member(
    client: &mut Object,
    actor: String,
    group_id: String,
    username: String,
) -> Result<GroupChanged> {
    if has_nul(&actor) || has_nul(&group_id) {
        return Err(StoreError::NotFound);
    }
    let now = now_ms();
    let tx = client.transaction().await?;
    let mut group = lock_group(&tx, &actor, &group_id).await?;
    may_manage(group.role_of(&actor))?;
    match group.role_of(&username) {
        None => return Err(StoreError::NotFound),
        Some(GroupRole::Owner) => {
            return Err(StoreError::Forbidden(
                "the owner of a group cannot be removed".into(),
            ))
        }
        Some(_) => {}
    }
    execute(&tx, DELETE_MEMBER, &[&group_id, &username]).await?;
    let concerned = [username];
    let event = insert_event(
        &tx,
        &group_id,
        &actor,
        MessageKind::MemberRemoved,
        &concerned,
        now,
    )
    .await?;
    tx.commit().await?;

    let [username] = concerned;
    group.members.retain(|m| m.username != username);
    group.last_seq = event.seq;
    let mut notify = group.usernames();
    notify.push(username);
    notify.sort();
    Ok(GroupChanged {
        group: group.info(group_id),
        event: Some(event),
        notify,
    })
}

async fn leave_group(client: &mut Object, actor: String, group_id: String) -> Result<GroupChanged> {
    if has_nul(&actor) || has_nul(&group_id) {
        return Err(StoreError::NotFound);
    }
    let now = now_ms();
    let tx = client.transaction().await?;
    let mut group = lock_group(&tx, &actor, &group_id).await?;
    let was_owner = group.role_of(&actor) == Some(GroupRole::Owner);
    execute(&tx, DELETE_MEMBER, &[&group_id, &actor]).await?;
    let concerned = [actor];
    let event = insert_event(
        &tx,
        &group_id,
        &concerned[0],
        MessageKind::MemberLeft,
        &concerned,
        now,
    )
    .await?;
    let [actor] = concerned;
    group.members.retain(|m| m.username != actor);
    if was_owner {
        // The longest-standing member (then the first by name) takes over.
        let heir = group.members.iter_mut().min_by(|a, b| {
            a.joined_seq
                .cmp(&b.joined_seq)
                .then_with(|| a.username.cmp(&b.username))
        });
        if let Some(heir) = heir {
            execute(
                &tx,
                "UPDATE members SET role = 'owner' WHERE conversation_id = $1 AND username = $2",
                &[&group_id, &heir.username],
            )
            .await?;
            heir.role = GroupRole::Owner;
        }
    }
    tx.commit().await?;

    group.last_seq = event.seq;
    let mut notify = group.usernames();
    notify.push(actor);
    notify.sort();
    Ok(GroupChanged {
        group: group.info(group_id),
        event: Some(event),
        notify,
    })
}

async fn group_info(c: &Object, username: &str, group_id: &str) -> Result<GroupInfo> {
    // One statement, one snapshot: the members agree with last_seq.
    const SQL: &str = "
        SELECT c.name, c.last_seq, m.username, m.role, m.joined_seq
          FROM conversations c JOIN members m ON m.conversation_id = c.id
         WHERE c.id = $1 AND c.kind = 'group'
         ORDER BY m.username";
    let rows = query(c, SQL, &[&group_id]).await?;
    let Some(first) = rows.first() else {
        return Err(StoreError::NotFound);
    };
    let name: Option<String> = first.try_get(0)?;
    let last_seq = seq_value(first.try_get(1)?);
    let members = rows
        .iter()
        .map(|r| group_member_from_row(r, 2))
        .collect::<Result<Vec<_>>>()?;
    if !members.iter().any(|m| m.username == username) {
        return Err(StoreError::NotFound);
    }
    Ok(GroupInfo {
        id: group_id.to_owned(),
        name: name.unwrap_or_default(),
        members,
        last_seq,
    })
}

// ------------------------------------------------------------- the traits

#[async_trait]
impl UserStore for PostgresStore {
    async fn create_user(&self, user: NewUser) -> Result<UserProfile> {
        let client = self.client().await?;
        let outcome =
            tokio::time::timeout(self.operation_timeout, create_user(&client, user)).await;
        self.settle(client, outcome)
    }

    async fn get_user(&self, username: &str) -> Result<Option<UserProfile>> {
        if has_nul(username) {
            return Ok(None);
        }
        let client = self.client().await?;
        let outcome =
            tokio::time::timeout(self.operation_timeout, get_user(&client, username)).await;
        self.settle(client, outcome)
    }

    async fn user_by_token_hash(&self, token_hash: &[u8; 32]) -> Result<Option<String>> {
        let client = self.client().await?;
        let outcome = tokio::time::timeout(
            self.operation_timeout,
            user_by_token_hash(&client, token_hash),
        )
        .await;
        self.settle(client, outcome)
    }

    async fn replace_token(&self, username: &str, old: &[u8; 32], new: &[u8; 32]) -> Result<bool> {
        if has_nul(username) {
            return Ok(false);
        }
        let client = self.client().await?;
        let (old, new): (&[u8], &[u8]) = (old, new);
        let outcome = tokio::time::timeout(
            self.operation_timeout,
            execute(
                &client,
                "UPDATE users SET token_hash = $3 WHERE username = $1 AND token_hash = $2",
                &[&username, &old, &new],
            ),
        )
        .await;
        self.settle(client, outcome).map(|rows| rows == 1)
    }

    async fn reset_token(&self, username: &str, new: &[u8; 32]) -> Result<Option<[u8; 32]>> {
        if has_nul(username) {
            return Ok(None);
        }
        let client = self.client().await?;
        let new: &[u8] = new;
        // The row lock makes the read and the update one step: a rotation
        // committed meanwhile is waited for, and its token is the one
        // returned (and replaced).
        let outcome = tokio::time::timeout(
            self.operation_timeout,
            query_opt(
                &client,
                "WITH old AS (
                     SELECT username, token_hash FROM users WHERE username = $1 FOR UPDATE
                 )
                 UPDATE users SET token_hash = $2 FROM old
                 WHERE users.username = old.username
                 RETURNING old.token_hash",
                &[&username, &new],
            ),
        )
        .await;
        self.settle(client, outcome)?
            .map(|row| {
                let old: Vec<u8> = row.try_get(0)?;
                old.try_into()
                    .map_err(|_| StoreError::Internal("a token hash is not 32 bytes".into()))
            })
            .transpose()
    }

    async fn list_users(&self, after: Option<&str>, limit: u32) -> Result<Vec<UserProfile>> {
        // No username holds a NUL (PostgreSQL text cannot): the names
        // after one that does are the names after what precedes its NUL.
        let after = after.map(|a| a.split('\0').next().unwrap_or_default());
        let limit = i64::from(match limit {
            0 => 50,
            n => n.min(MAX_PAGE),
        });
        let client = self.client().await?;
        let outcome = tokio::time::timeout(
            self.operation_timeout,
            query(
                &client,
                "SELECT username, name, phone, created_at_ms FROM users
                 WHERE $1::text IS NULL OR username > $1::text
                 ORDER BY username LIMIT $2",
                &[&after, &limit],
            ),
        )
        .await;
        self.settle(client, outcome)?
            .iter()
            .map(|r| {
                Ok(UserProfile {
                    username: r.try_get(0)?,
                    name: r.try_get(1)?,
                    phone: r.try_get(2)?,
                    created_at_unix_ms: r.try_get(3)?,
                })
            })
            .collect()
    }
}

#[async_trait]
impl MessageStore for PostgresStore {
    async fn append_message(&self, message: NewMessage) -> Result<Appended> {
        let mut client = self.client().await?;
        let outcome =
            tokio::time::timeout(self.operation_timeout, append(&mut client, message)).await;
        self.settle(client, outcome)
    }

    async fn history(
        &self,
        username: &str,
        conversation_id: &str,
        query: HistoryQuery,
    ) -> Result<HistoryPage> {
        if has_nul(username) || has_nul(conversation_id) {
            return Err(StoreError::NotFound);
        }
        let client = self.client().await?;
        let outcome = tokio::time::timeout(
            self.operation_timeout,
            history(&client, username, conversation_id, query),
        )
        .await;
        self.settle(client, outcome)
    }

    async fn conversations(&self, username: &str) -> Result<Vec<ConversationSummary>> {
        if has_nul(username) {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let outcome =
            tokio::time::timeout(self.operation_timeout, conversations(&client, username)).await;
        self.settle(client, outcome)
    }

    async fn mark_read(
        &self,
        username: &str,
        conversation_id: &str,
        seq: u64,
    ) -> Result<ReadCursor> {
        if has_nul(username) || has_nul(conversation_id) {
            return Err(StoreError::NotFound);
        }
        let client = self.client().await?;
        let outcome = tokio::time::timeout(
            self.operation_timeout,
            mark_read(&client, username, conversation_id, seq),
        )
        .await;
        self.settle(client, outcome)
    }

    async fn mark_delivered(&self, username: &str, conversation_id: &str, seq: u64) -> Result<u64> {
        if has_nul(username) || has_nul(conversation_id) {
            return Err(StoreError::NotFound);
        }
        let client = self.client().await?;
        let outcome = tokio::time::timeout(
            self.operation_timeout,
            mark_delivered(&client, username, conversation_id, seq),
        )
        .await;
        self.settle(client, outcome)
    }

    async fn members(&self, username: &str, conversation_id: &str) -> Result<Vec<String>> {
        if has_nul(username) || has_nul(conversation_id) {
            return Err(StoreError::NotFound);
        }
        let client = self.client().await?;
        let outcome = tokio::time::timeout(
            self.operation_timeout,
            members_of(&client, username, conversation_id),
        )
        .await;
        self.settle(client, outcome)
    }

    async fn change_message(&self, change: MessageChange) -> Result<Appended> {
        let mut client = self.client().await?;
        let outcome =
            tokio::time::timeout(self.operation_timeout, change_message(&mut client, change)).await;
        self.settle(client, outcome)
    }

    async fn contacts(&self, username: &str, largest_group: usize) -> Result<Vec<String>> {
        const SQL: &str = "SELECT DISTINCT o.username FROM members m
                           JOIN conversations c ON c.id = m.conversation_id
                           JOIN members o ON o.conversation_id = m.conversation_id
                           WHERE m.username = $1 AND o.username <> $1
                             AND (c.kind = 'direct'
                                  OR (SELECT COUNT(*) FROM members x
                                      WHERE x.conversation_id = c.id) <= $2)
                           ORDER BY o.username";
        if has_nul(username) {
            return Ok(Vec::new());
        }
        let largest = i64::try_from(largest_group).unwrap_or(i64::MAX);
        let client = self.client().await?;
        let outcome = tokio::time::timeout(self.operation_timeout, async {
            usernames(query(&client, SQL, &[&username, &largest]).await?)
        })
        .await;
        self.settle(client, outcome)
    }

    async fn delete_messages_before(&self, cutoff_unix_ms: i64, batch: usize) -> Result<u64> {
        if batch == 0 {
            return Err(StoreError::Invalid(
                "a batch deletes at least one message".into(),
            ));
        }
        let batch = i64::try_from(batch).unwrap_or(i64::MAX);
        let client = self.client().await?;
        let outcome = tokio::time::timeout(
            self.operation_timeout,
            execute(&client, DELETE_BEFORE, &[&cutoff_unix_ms, &batch]),
        )
        .await;
        self.settle(client, outcome)
    }

    async fn read_cursors(
        &self,
        username: &str,
        conversation_id: &str,
    ) -> Result<Vec<(String, u64)>> {
        if has_nul(username) || has_nul(conversation_id) {
            return Err(StoreError::NotFound);
        }
        let client = self.client().await?;
        let outcome = tokio::time::timeout(
            self.operation_timeout,
            read_cursors(&client, username, conversation_id),
        )
        .await;
        self.settle(client, outcome)
    }
}

#[async_trait]
impl GroupStore for PostgresStore {
    async fn change_group(&self, change: GroupChange, limits: GroupLimits) -> Result<GroupChanged> {
        let mut client = self.client().await?;
        let outcome = tokio::time::timeout(
            self.operation_timeout,
            change_group(&mut client, change, limits),
        )
        .await;
        self.settle(client, outcome)
    }

    async fn group(&self, username: &str, group_id: &str) -> Result<GroupInfo> {
        if has_nul(username) || has_nul(group_id) {
            return Err(StoreError::NotFound);
        }
        let client = self.client().await?;
        let outcome = tokio::time::timeout(
            self.operation_timeout,
            group_info(&client, username, group_id),
        )
        .await;
        self.settle(client, outcome)
    }
}

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

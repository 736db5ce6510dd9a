//! The PostgreSQL schema: numbered migrations recorded in
//! `schema_migrations`, applied under an advisory lock.

use deadpool_postgres::Object;

use super::now_ms;
use crate::Result;

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

pub(super) async fn migrate(client: &mut Object) -> Result<()> {
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

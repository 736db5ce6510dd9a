//! Conversations, members' cursors and messages in SQLite: sends, history,
//! edits, deletions and retention.

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use super::writer::in_savepoint;
use super::SqliteStore;
use super::Tx;
use crate::domain::messages::{
    append, body_column, change_message, from_body_column, Draft, Lookup, MessageTx,
};
use crate::domain::run_now;
use crate::{
    new_id, Appended, ConversationKind, ConversationSummary, HistoryPage, HistoryQuery,
    MessageChange, MessageKind, MessageStore, NewMessage, ReadCursor, Result, StoreError,
    StoredMessage, MAX_PAGE,
};

const MESSAGE_COLUMNS: &str = "id, conversation_id, seq, sender, body, client_msg_id, sent_at_ms, \
     kind, target_seq, edited_at_ms IS NOT NULL, deleted";

fn message_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredMessage> {
    let kind = MessageKind::parse(&row.get::<_, String>(7)?);
    let (body, members) = from_body_column(kind, row.get(4)?);
    Ok(StoredMessage {
        id: row.get(0)?,
        conversation_id: row.get(1)?,
        seq: row.get::<_, i64>(2)? as u64,
        sender: row.get(3)?,
        body,
        client_msg_id: row.get(5)?,
        sent_at_unix_ms: row.get(6)?,
        kind,
        target_seq: row.get::<_, i64>(8)? as u64,
        edited: row.get(9)?,
        deleted: row.get(10)?,
        members,
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

/// What a retry of `(sender, client_msg_id)` answers: the original, if
/// there is one.
fn original(conn: &Connection, sender: &str, client_msg_id: &str) -> Result<Option<Appended>> {
    let existing = conn
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE sender = ?1 AND client_msg_id = ?2"
        ))?
        .query_row(params![sender, client_msg_id], message_from_row)
        .optional()?;
    let Some(message) = existing else {
        return Ok(None);
    };
    let members = members(conn, &message.conversation_id)?;
    Ok(Some(Appended {
        message,
        members,
        duplicate: true,
    }))
}

/// Sends and changes inside the writer's transaction: the single writer
/// is the lock.
impl MessageTx for Tx<'_> {
    async fn look_up(
        &mut self,
        sender: &str,
        client_msg_id: &str,
        target: Lookup<'_>,
    ) -> Result<(Option<Appended>, Option<String>)> {
        let conn = self.0;
        let original = original(conn, sender, client_msg_id)?;
        let found = match target {
            Lookup::Direct(key) => conn
                .prepare_cached("SELECT id FROM conversations WHERE direct_key = ?1")?
                .query_row(params![key], |r| r.get(0))
                .optional()?,
            Lookup::Group(id) => is_member(conn, sender, id)?.then(|| id.to_owned()),
            Lookup::Nothing => None,
        };
        Ok((original, found))
    }

    async fn create_direct(
        &mut self,
        key: &str,
        a: &str,
        b: &str,
        now: i64,
    ) -> Result<Option<String>> {
        let conn = self.0;
        let peer_exists = conn
            .prepare_cached("SELECT 1 FROM users WHERE username = ?1")?
            .exists(params![b])?;
        if !peer_exists {
            return Ok(None);
        }
        let id = new_id('c');
        conn.prepare_cached(
            "INSERT INTO conversations (id, kind, direct_key, created_at_ms)
             VALUES (?1, 'direct', ?2, ?3)",
        )?
        .execute(params![id, key, now])?;
        let mut add =
            conn.prepare_cached("INSERT INTO members (conversation_id, username) VALUES (?1, ?2)")?;
        add.execute(params![id, a])?;
        add.execute(params![id, b])?;
        Ok(Some(id))
    }

    async fn insert(&mut self, draft: Draft) -> Result<(StoredMessage, Vec<String>)> {
        let message = insert_message(self.0, draft)?;
        let members = members(self.0, &message.conversation_id)?;
        Ok((message, members))
    }

    async fn lock_for_change(
        &mut self,
        editor: &str,
        conversation_id: &str,
        client_msg_id: &str,
    ) -> Result<(Option<Appended>, bool)> {
        let original = original(self.0, editor, client_msg_id)?;
        Ok((original, is_member(self.0, editor, conversation_id)?))
    }

    async fn change_target(
        &mut self,
        change: &MessageChange,
        event: Draft,
    ) -> Result<Option<(StoredMessage, Vec<String>)>> {
        let conn = self.0;
        let Some(joined) = joined_seq(conn, &change.editor, &change.conversation_id)? else {
            return Ok(None);
        };
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
            return Ok(None);
        }
        match &change.body {
            Some(body) => conn
                .prepare_cached(
                    "UPDATE messages SET body = ?3, edited_at_ms = ?4
                     WHERE conversation_id = ?1 AND seq = ?2",
                )?
                .execute(params![
                    change.conversation_id,
                    change.seq as i64,
                    body,
                    event.sent_at_unix_ms
                ])?,
            // Deleted means deleted: the text goes from the message and
            // from every edit event that carried it.
            None => conn
                .prepare_cached(
                    "UPDATE messages SET body = '', deleted = (seq = ?2)
                     WHERE conversation_id = ?1
                       AND (seq = ?2 OR (seq > ?2 AND kind = 'message_edited' AND target_seq = ?2))",
                )?
                .execute(params![change.conversation_id, change.seq as i64])?,
        };
        self.insert(event).await.map(Some)
    }
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
/// Inserts `draft` with its conversation's next seq.
pub(super) fn insert_message(conn: &Connection, draft: Draft) -> Result<StoredMessage> {
    let seq: i64 = conn
        .prepare_cached(
            "UPDATE conversations SET last_seq = last_seq + 1 WHERE id = ?1 RETURNING last_seq",
        )?
        .query_row(params![draft.conversation_id], |r| r.get(0))?;
    let message = draft.committed(seq as u64);
    insert_row(conn, &message)?;
    Ok(message)
}

/// Inserts `message` as it is, seq included.
pub(super) fn insert_row(conn: &Connection, message: &StoredMessage) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO messages
           (conversation_id, seq, id, sender, body, client_msg_id, sent_at_ms, kind, target_seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        message.conversation_id,
        message.seq as i64,
        message.id,
        message.sender,
        body_column(message.kind, &message.body, &message.members),
        message.client_msg_id,
        message.sent_at_unix_ms,
        message.kind.as_str(),
        message.target_seq as i64
    ])?;
    Ok(())
}

/// Edits or deletes a text message its sender wrote, with its event.
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

#[async_trait]
impl MessageStore for SqliteStore {
    async fn append_message(&self, message: NewMessage) -> Result<Appended> {
        self.write(move |c, now| run_now(append(&mut Tx(c), message, now)))
            .await
    }

    /// One write for all of them: they commit in the same transaction, in
    /// order, each in its own savepoint.
    async fn append_messages(&self, messages: Vec<NewMessage>) -> Vec<Result<Appended>> {
        let count = messages.len();
        match self
            .write(move |c, now| {
                Ok(messages
                    .into_iter()
                    .map(|message| in_savepoint(c, |c| run_now(append(&mut Tx(c), message, now))))
                    .collect::<Vec<_>>())
            })
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
        self.write(move |c, _| mark_read(c, &username, &conversation_id, seq))
            .await
    }

    async fn mark_delivered(&self, username: &str, conversation_id: &str, seq: u64) -> Result<u64> {
        let (username, conversation_id) = (username.to_owned(), conversation_id.to_owned());
        self.write(move |c, _| mark_delivered(c, &username, &conversation_id, seq))
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
        self.write(move |c, now| run_now(change_message(&mut Tx(c), change, now)))
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
        self.write(move |c, _| delete_messages_before(c, cutoff_unix_ms, batch))
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

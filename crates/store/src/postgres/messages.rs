//! Conversations, members' cursors and messages in PostgreSQL: sends,
//! history, edits, deletions and retention.

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Object};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::Tx;
use super::{
    execute, has_nul, is_member, members, message_by_client_id, message_from_row, now_ms, or_empty,
    query, query_opt, seq_param, seq_value, usernames, PostgresStore, MEMBERS,
    MESSAGE_BY_CLIENT_ID,
};
use crate::domain::messages::{append, change_message, Draft, Lookup, MessageTx};
use crate::{
    new_id, Appended, ConversationKind, ConversationSummary, HistoryPage, HistoryQuery,
    MessageChange, MessageStore, NewMessage, ReadCursor, Result, StoreError, StoredMessage,
    MAX_PAGE,
};

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

/// Takes the next seq of conversation `$1` and inserts the message with it
/// (`$8` is the target_seq: the changed message's seq for an edit or delete
/// event, 0 otherwise). The UPDATE's row lock serialises every writer of
/// the conversation (sends, edits and membership changes) until the commit,
/// and a rollback undoes the increment with the message, so seqs stay
/// gap-free. No row: no such conversation.
pub(super) const INSERT_MESSAGE: &str = "
    WITH next AS (
        UPDATE conversations SET last_seq = last_seq + 1
        WHERE id = $1 RETURNING last_seq
    )
    INSERT INTO messages
        (conversation_id, seq, id, sender, body, client_msg_id, sent_at_ms, kind, target_seq)
    SELECT $1, next.last_seq, $2, $3, $4, $5, $6, $7, $8 FROM next
    RETURNING seq";

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
/// empty body), under the same conditions as [`EDIT_TARGET`]. Deleted
/// means deleted: the text also goes from every edit event that carried
/// it (which follow the message, so the range of the primary key after it
/// holds them all).
const DELETE_TARGET: &str = "
    WITH target AS (
        UPDATE messages g SET body = '', deleted = TRUE
          FROM members m
         WHERE g.conversation_id = $1 AND g.seq = $2 AND g.sender = $3
           AND g.kind = 'text' AND NOT g.deleted
           AND m.conversation_id = g.conversation_id AND m.username = $3
           AND g.seq >= m.joined_seq
        RETURNING g.seq
    ), edits AS (
        UPDATE messages e SET body = ''
         WHERE e.conversation_id = $1 AND e.seq > $2
           AND e.kind = 'message_edited' AND e.target_seq = $2
           AND EXISTS (SELECT 1 FROM target)
    )
    SELECT seq FROM target";

/// What a retry of `(sender, client_msg_id)` answers: the original, if
/// there is one.
async fn original<C: GenericClient>(
    c: &C,
    existing: Option<StoredMessage>,
) -> Result<Option<Appended>> {
    let Some(message) = existing else {
        return Ok(None);
    };
    let members = members(c, &message.conversation_id).await?;
    Ok(Some(Appended {
        message,
        members,
        duplicate: true,
    }))
}

/// What an operation answers when its insert lost the race to an
/// identical retry that committed first (or was waited for): that
/// original. Run after the rollback, which undid this attempt's seq.
async fn committed_original(c: &Object, sender: &str, client_msg_id: &str) -> Result<Appended> {
    let existing = message_by_client_id(c, sender, client_msg_id).await?;
    original(c, existing).await?.ok_or_else(|| {
        StoreError::Internal("a unique violation without an original message".into())
    })
}

/// Runs `rule` in a transaction of `c` and commits it; a unique violation
/// of `(sender, client_msg_id)` answers the original.
async fn in_transaction(
    c: &mut Object,
    sender: &str,
    client_msg_id: &str,
    rule: impl AsyncFnOnce(&mut Tx<'_, '_>) -> Result<Appended>,
) -> Result<Appended> {
    // Nothing stored can match a key holding NUL: there is no original to
    // find, and nothing can be stored.
    if has_nul(client_msg_id) {
        return Err(StoreError::Invalid(
            "client_msg_id must not contain NUL characters".into(),
        ));
    }
    let tx = c.transaction().await?;
    match rule(&mut Tx(&tx)).await {
        Ok(appended) => {
            tx.commit().await?;
            Ok(appended)
        }
        Err(StoreError::AlreadyExists) => {
            tx.rollback().await?;
            committed_original(c, sender, client_msg_id).await
        }
        Err(e) => Err(e),
    }
}

fn nul_in_body() -> StoreError {
    StoreError::Invalid("body must not contain NUL characters".into())
}

/// Sends and changes inside one PostgreSQL transaction; each primitive is
/// one round trip.
impl MessageTx for Tx<'_, '_> {
    async fn look_up(
        &mut self,
        sender: &str,
        client_msg_id: &str,
        target: Lookup<'_>,
    ) -> Result<(Option<Appended>, Option<String>)> {
        let tx = self.0;
        let existing = message_by_client_id(tx, sender, client_msg_id);
        let (existing, found) = match target {
            Lookup::Direct(key) if !has_nul(key) => {
                let params: [&(dyn ToSql + Sync); 1] = [&key];
                let lookup = query_opt(
                    tx,
                    "SELECT id FROM conversations WHERE direct_key = $1",
                    &params,
                );
                let (existing, found) = tokio::join!(existing, lookup);
                (existing?, found?.map(|row| row.try_get(0)).transpose()?)
            }
            Lookup::Group(group) if !has_nul(group) => {
                let (existing, member) = tokio::join!(existing, is_member(tx, sender, group));
                (existing?, member?.then(|| group.to_owned()))
            }
            _ => (existing.await?, None),
        };
        Ok((original(tx, existing).await?, found))
    }

    /// A concurrent creator of the same key makes the insert wait for its
    /// commit and then do nothing; the read that follows (read committed)
    /// sees the winner's row.
    async fn create_direct(
        &mut self,
        key: &str,
        a: &str,
        b: &str,
        now: i64,
    ) -> Result<Option<String>> {
        let tx = self.0;
        if has_nul(b)
            || query_opt(tx, "SELECT 1 FROM users WHERE username = $1", &[&b])
                .await?
                .is_none()
        {
            return Ok(None);
        }
        let id = new_id('c');
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
            return Ok(Some(id));
        }
        match query_opt(
            tx,
            "SELECT id FROM conversations WHERE direct_key = $1",
            &[&key],
        )
        .await?
        {
            Some(row) => Ok(Some(row.try_get(0)?)),
            None => Err(StoreError::Unavailable(
                "the direct conversation is being created; retry".into(),
            )),
        }
    }

    /// The member list goes out right behind the insert, in one round trip
    /// (one less while the row lock is held). Both statements are prepared
    /// first so that polling sends them in this order and the server reads
    /// the members after the insert, under the lock. The list counts only
    /// if the insert succeeded.
    async fn insert(&mut self, draft: Draft) -> Result<(StoredMessage, Vec<String>)> {
        let body = draft.body_column();
        if has_nul(&body) {
            return Err(nul_in_body());
        }
        let tx = self.0;
        let kind = draft.kind.as_str();
        let target_seq = seq_param(draft.target_seq);
        let params: [&(dyn ToSql + Sync); 8] = [
            &draft.conversation_id,
            &draft.id,
            &draft.sender,
            &body,
            &draft.client_msg_id,
            &draft.sent_at_unix_ms,
            &kind,
            &target_seq,
        ];
        let (insert, list) = tokio::try_join!(
            tx.prepare_cached(INSERT_MESSAGE),
            tx.prepare_cached(MEMBERS)
        )?;
        let list_params: [&(dyn ToSql + Sync); 1] = [&draft.conversation_id];
        let (inserted, member_list) = tokio::join!(
            tx.query_opt(&insert, &params),
            tx.query(&list, &list_params),
        );
        let seq = inserted_seq(inserted, &draft.conversation_id)?;
        let members = usernames(member_list?)?;
        Ok((draft.committed(seq), members))
    }

    /// The lock and the retry check go out in one round trip; the check
    /// runs once the lock is granted, so it sees an identical change that
    /// committed while this one waited for the lock.
    async fn lock_for_change(
        &mut self,
        editor: &str,
        conversation_id: &str,
        client_msg_id: &str,
    ) -> Result<(Option<Appended>, bool)> {
        let tx = self.0;
        let (locked, existing) = if has_nul(conversation_id) {
            (
                false,
                message_by_client_id(tx, editor, client_msg_id).await?,
            )
        } else {
            let (lock, by_key) = tokio::try_join!(
                tx.prepare_cached(LOCK_CONVERSATION),
                tx.prepare_cached(MESSAGE_BY_CLIENT_ID)
            )?;
            let lock_params: [&(dyn ToSql + Sync); 2] = [&conversation_id, &editor];
            let key_params: [&(dyn ToSql + Sync); 2] = [&editor, &client_msg_id];
            let (locked, existing) = tokio::join!(
                tx.query_opt(&lock, &lock_params),
                tx.query_opt(&by_key, &key_params),
            );
            let existing = existing?.map(|r| message_from_row(&r, 0)).transpose()?;
            (locked?.is_some(), existing)
        };
        Ok((original(tx, existing).await?, locked))
    }

    /// The change of the target, the event and the member list go out in
    /// one round trip, in this order (prepared first, as in `insert`). The
    /// event counts only if the target changed.
    async fn change_target(
        &mut self,
        change: &MessageChange,
        event: Draft,
    ) -> Result<Option<(StoredMessage, Vec<String>)>> {
        if has_nul(&event.body) {
            return Err(nul_in_body());
        }
        let tx = self.0;
        let target_sql = match change.body {
            Some(_) => EDIT_TARGET,
            None => DELETE_TARGET,
        };
        let (target, insert, list) = tokio::try_join!(
            tx.prepare_cached(target_sql),
            tx.prepare_cached(INSERT_MESSAGE),
            tx.prepare_cached(MEMBERS)
        )?;
        let target_seq = seq_param(change.seq);
        let edit_params: [&(dyn ToSql + Sync); 5] = [
            &event.conversation_id,
            &target_seq,
            &event.sender,
            &event.body,
            &event.sent_at_unix_ms,
        ];
        let target_params = match change.body {
            Some(_) => &edit_params[..],
            None => &edit_params[..3],
        };
        let kind_name = event.kind.as_str();
        let event_params: [&(dyn ToSql + Sync); 8] = [
            &event.conversation_id,
            &event.id,
            &event.sender,
            &event.body,
            &event.client_msg_id,
            &event.sent_at_unix_ms,
            &kind_name,
            &target_seq,
        ];
        let list_params: [&(dyn ToSql + Sync); 1] = [&event.conversation_id];
        let (changed, inserted, member_list) = tokio::join!(
            tx.query_opt(&target, target_params),
            tx.query_opt(&insert, &event_params),
            tx.query(&list, &list_params),
        );
        if changed?.is_none() {
            // Not the editor's own live text message, or no message at
            // all: the same answer. The rollback undoes the event.
            return Ok(None);
        }
        let seq = inserted_seq(inserted, &event.conversation_id)?;
        let members = usernames(member_list?)?;
        Ok(Some((event.committed(seq), members)))
    }
}

/// The seq [`INSERT_MESSAGE`] returned; no row means the conversation is
/// gone.
fn inserted_seq(
    inserted: std::result::Result<Option<Row>, tokio_postgres::Error>,
    conversation_id: &str,
) -> Result<u64> {
    match inserted? {
        Some(row) => Ok(seq_value(row.try_get(0)?)),
        None => Err(StoreError::Internal(format!(
            "conversation {conversation_id} vanished"
        ))),
    }
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

#[async_trait]
impl MessageStore for PostgresStore {
    async fn append_message(&self, message: NewMessage) -> Result<Appended> {
        let (sender, key) = (message.sender.clone(), message.client_msg_id.clone());
        self.run(&[&sender], async |c| {
            in_transaction(c, &sender, &key, async |tx| {
                append(tx, message, now_ms()).await
            })
            .await
        })
        .await
    }

    async fn history(
        &self,
        username: &str,
        conversation_id: &str,
        query: HistoryQuery,
    ) -> Result<HistoryPage> {
        self.run(&[username, conversation_id], async |c| {
            history(c, username, conversation_id, query).await
        })
        .await
    }

    async fn conversations(&self, username: &str) -> Result<Vec<ConversationSummary>> {
        or_empty(
            self.run(&[username], async |c| conversations(c, username).await)
                .await,
        )
    }

    async fn mark_read(
        &self,
        username: &str,
        conversation_id: &str,
        seq: u64,
    ) -> Result<ReadCursor> {
        self.run(&[username, conversation_id], async |c| {
            mark_read(c, username, conversation_id, seq).await
        })
        .await
    }

    async fn mark_delivered(&self, username: &str, conversation_id: &str, seq: u64) -> Result<u64> {
        self.run(&[username, conversation_id], async |c| {
            mark_delivered(c, username, conversation_id, seq).await
        })
        .await
    }

    async fn members(&self, username: &str, conversation_id: &str) -> Result<Vec<String>> {
        self.run(&[username, conversation_id], async |c| {
            members_of(c, username, conversation_id).await
        })
        .await
    }

    async fn change_message(&self, change: MessageChange) -> Result<Appended> {
        let (editor, key) = (change.editor.clone(), change.client_msg_id.clone());
        self.run(&[&editor], async |c| {
            in_transaction(c, &editor, &key, async |tx| {
                change_message(tx, change, now_ms()).await
            })
            .await
        })
        .await
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
        let largest = i64::try_from(largest_group).unwrap_or(i64::MAX);
        or_empty(
            self.run(&[username], async |c| {
                usernames(query(&*c, SQL, &[&username, &largest]).await?)
            })
            .await,
        )
    }

    async fn delete_messages_before(&self, cutoff_unix_ms: i64, batch: usize) -> Result<u64> {
        if batch == 0 {
            return Err(StoreError::Invalid(
                "a batch deletes at least one message".into(),
            ));
        }
        let batch = i64::try_from(batch).unwrap_or(i64::MAX);
        self.run(&[], async |c| {
            execute(&*c, DELETE_BEFORE, &[&cutoff_unix_ms, &batch]).await
        })
        .await
    }

    async fn read_cursors(
        &self,
        username: &str,
        conversation_id: &str,
    ) -> Result<Vec<(String, u64)>> {
        self.run(&[username, conversation_id], async |c| {
            read_cursors(c, username, conversation_id).await
        })
        .await
    }
}

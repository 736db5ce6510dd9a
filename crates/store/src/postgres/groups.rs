//! Groups in PostgreSQL: the primitives the rules of
//! [`crate::domain::groups`] run on, each as few round trips as it can
//! be, and the group read. Several servers change groups at once, so the
//! locks are the database's: the group's conversation row, then its new
//! members' user rows in username order.

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Object};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::messages::INSERT_MESSAGE;
use super::{execute, has_nul, query, query_opt, seq_param, seq_value, PostgresStore, Tx};
use crate::domain::groups::{change_group, Admission, GroupTx};
use crate::domain::messages::{body_column, Draft};
use crate::{
    GroupChange, GroupChanged, GroupInfo, GroupLimits, GroupMember, GroupRole, GroupStore, Result,
    StoreError, StoredMessage,
};

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

fn group_member_from_row(row: &Row, at: usize) -> Result<GroupMember> {
    let role: String = row.try_get(at + 1)?;
    Ok(GroupMember {
        username: row.try_get(at)?,
        role: GroupRole::parse(&role),
        joined_seq: seq_value(row.try_get(at + 2)?),
    })
}

impl GroupTx for Tx<'_, '_> {
    /// Takes the lock and reads the members in one round trip; the
    /// members read after the lock was granted are the ones that count.
    async fn lock_group(&mut self, actor: &str, group_id: &str) -> Result<Option<GroupInfo>> {
        if has_nul(actor) || has_nul(group_id) {
            return Ok(None);
        }
        let tx = self.0;
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
            return Ok(None);
        };
        let name: Option<String> = row.try_get(0)?;
        let members = rows?
            .iter()
            .map(|r| group_member_from_row(r, 0))
            .collect::<Result<Vec<_>>>()?;
        if !members.iter().any(|m| m.username == actor) {
            return Ok(None);
        }
        Ok(Some(GroupInfo {
            id: group_id.to_owned(),
            name: name.unwrap_or_default(),
            members,
            last_seq: seq_value(row.try_get(1)?),
        }))
    }

    /// The locks, then the count in a statement of its own (so that it
    /// sees every change committed by whoever held them before), in one
    /// round trip.
    async fn admit(&mut self, users: &[String], max_groups: usize) -> Result<Admission> {
        if users.iter().any(|u| has_nul(u)) {
            // No stored username holds NUL.
            return Ok(Admission {
                found: 0,
                full: None,
            });
        }
        let tx = self.0;
        let max_groups = i64::try_from(max_groups).unwrap_or(i64::MAX);
        let (lock, full) =
            tokio::try_join!(tx.prepare_cached(LOCK_USERS), tx.prepare_cached(FULL_USER))?;
        let lock_params: [&(dyn ToSql + Sync); 1] = [&users];
        let full_params: [&(dyn ToSql + Sync); 2] = [&users, &max_groups];
        let (found, full) = tokio::join!(
            tx.query(&lock, &lock_params),
            tx.query_opt(&full, &full_params),
        );
        Ok(Admission {
            found: found?.len(),
            full: full?.map(|row| row.try_get(0)).transpose()?,
        })
    }

    /// The conversation, its members and its first event in one round
    /// trip.
    async fn insert_group(&mut self, group: &GroupInfo, event: &StoredMessage) -> Result<()> {
        if has_nul(&group.name) {
            return Err(StoreError::Invalid(
                "a group name must not contain NUL characters".into(),
            ));
        }
        const CONVERSATION: &str = "
            INSERT INTO conversations (id, kind, name, last_seq, created_at_ms)
            VALUES ($1, 'group', $2, $3, $4)";
        const MEMBERS_OF_NEW: &str = "
            INSERT INTO members (conversation_id, username, role, joined_seq)
            SELECT $1::TEXT, u.name, u.role, $4::BIGINT
              FROM unnest($2::TEXT[], $3::TEXT[]) AS u(name, role)";
        const EVENT: &str = "
            INSERT INTO messages
                (conversation_id, seq, id, sender, body, client_msg_id, sent_at_ms, kind)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
        let tx = self.0;
        let names: Vec<&str> = group.members.iter().map(|m| m.username.as_str()).collect();
        let roles: Vec<&str> = group.members.iter().map(|m| m.role.as_str()).collect();
        let seq = seq_param(event.seq);
        let kind = event.kind.as_str();
        let body = body_column(event.kind, &event.body, &event.members);
        let (conversation, member_rows, event_row) = tokio::try_join!(
            tx.prepare_cached(CONVERSATION),
            tx.prepare_cached(MEMBERS_OF_NEW),
            tx.prepare_cached(EVENT),
        )?;
        let conversation_params: [&(dyn ToSql + Sync); 4] =
            [&group.id, &group.name, &seq, &event.sent_at_unix_ms];
        let member_params: [&(dyn ToSql + Sync); 4] = [&group.id, &names, &roles, &seq];
        let event_params: [&(dyn ToSql + Sync); 8] = [
            &group.id,
            &seq,
            &event.id,
            &event.sender,
            &body,
            &event.client_msg_id,
            &event.sent_at_unix_ms,
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
        Ok(())
    }

    async fn insert_event(&mut self, event: Draft) -> Result<StoredMessage> {
        let kind = event.kind.as_str();
        let body = event.body_column();
        let target_seq = seq_param(event.target_seq);
        let row = query_opt(
            self.0,
            INSERT_MESSAGE,
            &[
                &event.conversation_id,
                &event.id,
                &event.sender,
                &body,
                &event.client_msg_id,
                &event.sent_at_unix_ms,
                &kind,
                &target_seq,
            ],
        )
        .await?
        .ok_or_else(|| StoreError::Internal(format!("group {} vanished", event.conversation_id)))?;
        let seq = seq_value(row.try_get(0)?);
        Ok(event.committed(seq))
    }

    async fn add_members(
        &mut self,
        group_id: &str,
        usernames: &[String],
        joined_seq: u64,
    ) -> Result<()> {
        const ADD: &str = "
            INSERT INTO members
                (conversation_id, username, role, joined_seq, read_seq, delivered_seq)
            SELECT $1::TEXT, u, 'member', $3::BIGINT, $3::BIGINT - 1, $3::BIGINT - 1
              FROM unnest($2::TEXT[]) AS u";
        let seq = seq_param(joined_seq);
        execute(self.0, ADD, &[&group_id, &usernames, &seq]).await?;
        Ok(())
    }

    async fn delete_member(&mut self, group_id: &str, username: &str) -> Result<()> {
        execute(
            self.0,
            "DELETE FROM members WHERE conversation_id = $1 AND username = $2",
            &[&group_id, &username],
        )
        .await?;
        Ok(())
    }

    async fn set_owner(&mut self, group_id: &str, username: &str) -> Result<()> {
        execute(
            self.0,
            "UPDATE members SET role = 'owner' WHERE conversation_id = $1 AND username = $2",
            &[&group_id, &username],
        )
        .await?;
        Ok(())
    }
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

#[async_trait]
impl GroupStore for PostgresStore {
    async fn change_group(&self, change: GroupChange, limits: GroupLimits) -> Result<GroupChanged> {
        self.run(&[], async |c| {
            let now = super::now_ms();
            let tx = c.transaction().await?;
            let changed = change_group(&mut Tx(&tx), change, limits, now).await?;
            tx.commit().await?;
            Ok(changed)
        })
        .await
    }

    async fn group(&self, username: &str, group_id: &str) -> Result<GroupInfo> {
        self.run(&[username, group_id], async |c| {
            group_info(c, username, group_id).await
        })
        .await
    }
}

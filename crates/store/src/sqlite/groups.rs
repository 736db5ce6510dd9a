//! Groups in SQLite: the primitives the rules of [`crate::domain::groups`]
//! run on, and the group read. The single writer thread is the lock: a
//! change runs alone, so "locking" is reading.

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use super::messages::{insert_message, insert_row};
use super::{SqliteStore, Tx};
use crate::domain::groups::{change_group, Admission, GroupTx};
use crate::domain::messages::Draft;
use crate::domain::run_now;
use crate::{
    GroupChange, GroupChanged, GroupInfo, GroupLimits, GroupMember, GroupRole, GroupStore, Result,
    StoreError, StoredMessage,
};

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

/// A group `username` is a member of, members sorted by username.
fn group_info(conn: &Connection, username: &str, group_id: &str) -> Result<Option<GroupInfo>> {
    if role_of(conn, username, group_id)?.is_none() {
        return Ok(None);
    }
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
    Ok(Some(GroupInfo {
        id: group_id.to_owned(),
        name: name.unwrap_or_default(),
        members,
        last_seq: last_seq as u64,
    }))
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

impl GroupTx for Tx<'_> {
    async fn lock_group(&mut self, actor: &str, group_id: &str) -> Result<Option<GroupInfo>> {
        group_info(self.0, actor, group_id)
    }

    async fn admit(&mut self, users: &[String], max_groups: usize) -> Result<Admission> {
        let mut exists = self
            .0
            .prepare_cached("SELECT 1 FROM users WHERE username = ?1")?;
        let mut groups = self.0.prepare_cached(
            "SELECT COUNT(*) FROM members m JOIN conversations c ON c.id = m.conversation_id
             WHERE m.username = ?1 AND c.kind = 'group'",
        )?;
        let mut admission = Admission {
            found: 0,
            full: None,
        };
        for user in users {
            if !exists.exists(params![user])? {
                continue;
            }
            admission.found += 1;
            let n: i64 = groups.query_row(params![user], |r| r.get(0))?;
            if admission.full.is_none() && n as usize >= max_groups {
                admission.full = Some(user.clone());
            }
        }
        Ok(admission)
    }

    async fn insert_group(&mut self, group: &GroupInfo, event: &StoredMessage) -> Result<()> {
        self.0
            .prepare_cached(
                "INSERT INTO conversations (id, kind, name, last_seq, created_at_ms)
                 VALUES (?1, 'group', ?2, ?3, ?4)",
            )?
            .execute(params![
                group.id,
                group.name,
                event.seq as i64,
                event.sent_at_unix_ms
            ])?;
        for member in &group.members {
            add_member(self.0, &group.id, &member.username, member.role, 1)?;
        }
        insert_row(self.0, event)
    }

    async fn insert_event(&mut self, event: Draft) -> Result<StoredMessage> {
        insert_message(self.0, event)
    }

    async fn add_members(
        &mut self,
        group_id: &str,
        usernames: &[String],
        joined_seq: u64,
    ) -> Result<()> {
        for user in usernames {
            add_member(self.0, group_id, user, GroupRole::Member, joined_seq)?;
        }
        Ok(())
    }

    async fn delete_member(&mut self, group_id: &str, username: &str) -> Result<()> {
        self.0
            .prepare_cached("DELETE FROM members WHERE conversation_id = ?1 AND username = ?2")?
            .execute(params![group_id, username])?;
        Ok(())
    }

    async fn set_owner(&mut self, group_id: &str, username: &str) -> Result<()> {
        self.0
            .prepare_cached(
                "UPDATE members SET role = 'owner' WHERE conversation_id = ?1 AND username = ?2",
            )?
            .execute(params![group_id, username])?;
        Ok(())
    }
}

#[async_trait]
impl GroupStore for SqliteStore {
    async fn change_group(&self, change: GroupChange, limits: GroupLimits) -> Result<GroupChanged> {
        self.write(move |c, now| run_now(change_group(&mut Tx(c), change, limits, now)))
            .await
    }

    async fn group(&self, username: &str, group_id: &str) -> Result<GroupInfo> {
        let (username, group_id) = (username.to_owned(), group_id.to_owned());
        self.read(move |conn| group_info(conn, &username, &group_id)?.ok_or(StoreError::NotFound))
            .await
    }
}

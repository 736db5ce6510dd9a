//! Users and their credentials in SQLite.

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};

use super::SqliteStore;
use crate::{NewUser, Result, UserProfile, UserStore, MAX_PAGE};

fn create_user(conn: &Connection, user: NewUser, now: i64) -> Result<UserProfile> {
    conn.prepare_cached(
        "INSERT INTO users (username, name, phone, token_hash, created_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        user.username,
        user.name,
        user.phone,
        &user.token_hash[..],
        now
    ])?;
    Ok(UserProfile {
        username: user.username,
        name: user.name,
        phone: user.phone,
        created_at_unix_ms: now,
    })
}

fn profile_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UserProfile> {
    Ok(UserProfile {
        username: r.get(0)?,
        name: r.get(1)?,
        phone: r.get(2)?,
        created_at_unix_ms: r.get(3)?,
    })
}

#[async_trait]
impl UserStore for SqliteStore {
    async fn create_user(&self, user: NewUser) -> Result<UserProfile> {
        self.write(move |c, now| create_user(c, user, now)).await
    }

    async fn replace_token(&self, username: &str, old: &[u8; 32], new: &[u8; 32]) -> Result<bool> {
        let username = username.to_owned();
        let (old, new) = (*old, *new);
        self.write(move |c, _| {
            let sql = "UPDATE users SET token_hash = ?3 WHERE username = ?1 AND token_hash = ?2";
            let changed = c
                .prepare_cached(sql)?
                .execute(params![username, &old[..], &new[..]])?;
            Ok(changed == 1)
        })
        .await
    }

    async fn reset_token(&self, username: &str, new: &[u8; 32]) -> Result<Option<[u8; 32]>> {
        let (username, new) = (username.to_owned(), *new);
        // The single writer makes the read and the update one step.
        self.write(move |c, _| {
            let old: Option<[u8; 32]> = c
                .prepare_cached("SELECT token_hash FROM users WHERE username = ?1")?
                .query_row(params![username], |r| r.get(0))
                .optional()?;
            if old.is_some() {
                c.prepare_cached("UPDATE users SET token_hash = ?2 WHERE username = ?1")?
                    .execute(params![username, &new[..]])?;
            }
            Ok(old)
        })
        .await
    }

    async fn list_users(&self, after: Option<&str>, limit: u32) -> Result<Vec<UserProfile>> {
        let after = after.map(str::to_owned);
        let limit = match limit {
            0 => 50,
            n => n.min(MAX_PAGE),
        };
        self.read(move |conn| {
            // Usernames are ASCII, so SQLite's default (binary) collation
            // is byte order, as in PostgreSQL's "C".
            let mut stmt = conn.prepare_cached(
                "SELECT username, name, phone, created_at_ms FROM users
                 WHERE ?1 IS NULL OR username > ?1 ORDER BY username LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after, limit], profile_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn get_user(&self, username: &str) -> Result<Option<UserProfile>> {
        let username = username.to_owned();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT username, name, phone, created_at_ms FROM users WHERE username = ?1",
                )?
                .query_row(params![username], profile_from_row)
                .optional()?)
        })
        .await
    }

    async fn user_by_token_hash(&self, token_hash: &[u8; 32]) -> Result<Option<String>> {
        let hash = *token_hash;
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT username FROM users WHERE token_hash = ?1")?
                .query_row(params![&hash[..]], |r| r.get(0))
                .optional()?)
        })
        .await
    }
}

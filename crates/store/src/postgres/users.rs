//! Users and their credentials in PostgreSQL.

use async_trait::async_trait;
use deadpool_postgres::Object;

use super::{execute, has_nul, now_ms, or_empty, query, query_opt, PostgresStore};
use crate::{NewUser, Result, StoreError, UserProfile, UserStore, MAX_PAGE};

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

#[async_trait]
impl UserStore for PostgresStore {
    async fn create_user(&self, user: NewUser) -> Result<UserProfile> {
        self.run(&[], async |c| create_user(c, user).await).await
    }

    async fn get_user(&self, username: &str) -> Result<Option<UserProfile>> {
        or_empty(
            self.run(&[username], async |c| get_user(c, username).await)
                .await,
        )
    }

    async fn user_by_token_hash(&self, token_hash: &[u8; 32]) -> Result<Option<String>> {
        self.run(&[], async |c| user_by_token_hash(c, token_hash).await)
            .await
    }

    async fn replace_token(&self, username: &str, old: &[u8; 32], new: &[u8; 32]) -> Result<bool> {
        let (old, new): (&[u8], &[u8]) = (old, new);
        let changed = self
            .run(&[username], async |c| {
                execute(
                    &*c,
                    "UPDATE users SET token_hash = $3 WHERE username = $1 AND token_hash = $2",
                    &[&username, &old, &new],
                )
                .await
            })
            .await;
        or_empty(changed.map(|rows| rows == 1))
    }

    async fn reset_token(&self, username: &str, new: &[u8; 32]) -> Result<Option<[u8; 32]>> {
        let new: &[u8] = new;
        // The row lock makes the read and the update one step: a rotation
        // committed meanwhile is waited for, and its token is the one
        // returned (and replaced).
        let row = self
            .run(&[username], async |c| {
                query_opt(
                    &*c,
                    "WITH old AS (
                         SELECT username, token_hash FROM users WHERE username = $1 FOR UPDATE
                     )
                     UPDATE users SET token_hash = $2 FROM old
                     WHERE users.username = old.username
                     RETURNING old.token_hash",
                    &[&username, &new],
                )
                .await
            })
            .await;
        or_empty(row)?
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
        self.run(&[], async |c| {
            query(
                &*c,
                "SELECT username, name, phone, created_at_ms FROM users
                 WHERE $1::text IS NULL OR username > $1::text
                 ORDER BY username LIMIT $2",
                &[&after, &limit],
            )
            .await
        })
        .await?
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

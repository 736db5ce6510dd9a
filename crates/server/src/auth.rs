//! Secrets and the bearer check.
//!
//! A secret is 256 random bits, hex encoded, shown to its owner once. The
//! store keeps only its SHA-256, and a presented secret is found by the hash
//! of what was presented: the comparison the database performs is between
//! hashes, so its timing tells nothing about the secret itself.

use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;

use std::sync::Arc;

use chat_store::{NewUser, Store, UserProfile};

use crate::rate::Rates;
use crate::routing::{Delivery, Mode, Refused, Undelivered};
use crate::sessions::Event;
use crate::{names, ApiError};

/// A new secret from the operating system's random generator.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    hex::encode(bytes)
}

pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The secret in an `authorization: Bearer <secret>` value, if well formed.
pub fn bearer_secret(header: &str) -> Option<&str> {
    let (scheme, secret) = header.trim().split_once(' ')?;
    let secret = secret.trim();
    (scheme.eq_ignore_ascii_case("bearer")
        && secret.len() == 64
        && secret.bytes().all(|b| b.is_ascii_hexdigit()))
    .then_some(secret)
}

/// A short, public name for a secret: the first 8 bytes of its hash. It
/// tells sessions which secret was revoked without putting the hash (what
/// the store looks secrets up by) on the bus.
pub fn fingerprint(hash: &[u8; 32]) -> u64 {
    u64::from_be_bytes(hash[..8].try_into().expect("8 bytes"))
}

/// Accounts: registration, public profiles, and the secrets that
/// authenticate every request (checked, rotated by the user, revoked by an
/// operator).
pub struct Accounts {
    store: Arc<dyn Store>,
    delivery: Arc<Delivery>,
    rates: Arc<Rates>,
}

impl Accounts {
    pub(crate) fn new(store: Arc<dyn Store>, delivery: Arc<Delivery>, rates: Arc<Rates>) -> Self {
        Self {
            store,
            delivery,
            rates,
        }
    }

    /// Creates a user and returns its profile and its secret (shown once).
    /// `client`, the address it came from, is rate limited when given.
    pub async fn register(
        &self,
        username: &str,
        name: &str,
        phone: &str,
        client: Option<std::net::IpAddr>,
    ) -> Result<(UserProfile, String), ApiError> {
        if let Some(client) = client {
            self.rates
                .register
                .check(&client)
                .map_err(|retry_after| ApiError::RateLimited {
                    what: "registrations",
                    retry_after,
                })?;
        }
        let username = names::normalize_username(username)?;
        let name = names::profile_field("name", name, 64)?;
        let phone = names::profile_field("phone", phone, 32)?;
        let secret = new_secret();
        let profile = self
            .store
            .create_user(NewUser {
                username,
                name,
                phone,
                token_hash: hash_secret(&secret),
            })
            .await
            .map_err(|e| match e {
                chat_store::StoreError::AlreadyExists => {
                    ApiError::AlreadyExists("username is taken".into())
                }
                other => other.into(),
            })?;
        tracing::info!(user = %profile.username, "user registered");
        Ok((profile, secret))
    }

    /// The public profile of `username`.
    pub async fn profile(&self, username: &str) -> Result<UserProfile, ApiError> {
        let username =
            names::normalize_username(username).map_err(|_| ApiError::NotFound("user"))?;
        self.store
            .get_user(&username)
            .await?
            .ok_or(ApiError::NotFound("user"))
    }

    /// A page of users by username, after `after` (for operators).
    pub async fn list(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<UserProfile>, ApiError> {
        Ok(self.store.list_users(after, limit).await?)
    }

    /// The user a request's bearer secret belongs to. Every failure (no
    /// header, a malformed one, an unknown secret) is the same
    /// [`ApiError::Unauthenticated`].
    pub async fn authenticate(&self, metadata: &MetadataMap) -> Result<String, ApiError> {
        Ok(self.authenticate_token(metadata).await?.0)
    }

    pub async fn authenticate_header(&self, header: &str) -> Result<String, ApiError> {
        Ok(self.authenticate_secret(header).await?.0)
    }

    /// The user a request's bearer secret belongs to, and the secret's hash.
    pub async fn authenticate_token(
        &self,
        metadata: &MetadataMap,
    ) -> Result<(String, [u8; 32]), ApiError> {
        let header = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or(ApiError::Unauthenticated)?;
        self.authenticate_secret(header).await
    }

    /// Who owns the secret whose SHA-256 is `token_hash` now, if anyone.
    pub async fn owner(&self, token_hash: &[u8; 32]) -> Result<Option<String>, ApiError> {
        Ok(self.store.user_by_token_hash(token_hash).await?)
    }

    async fn authenticate_secret(&self, header: &str) -> Result<(String, [u8; 32]), ApiError> {
        let secret = bearer_secret(header).ok_or(ApiError::Unauthenticated)?;
        let hash = hash_secret(&secret.to_ascii_lowercase());
        let user = self
            .store
            .user_by_token_hash(&hash)
            .await?
            .ok_or(ApiError::Unauthenticated)?;
        Ok((user, hash))
    }

    /// Replaces the secret whose hash is `old` (of `username`) with a new
    /// one, returned to be shown once, and ends the streams opened with
    /// the old one on every server.
    pub async fn rotate_secret(&self, username: &str, old: &[u8; 32]) -> Result<String, ApiError> {
        let secret = new_secret();
        if !self
            .store
            .replace_token(username, old, &hash_secret(&secret))
            .await?
        {
            // Rotated meanwhile by another request: the old secret is gone.
            return Err(ApiError::Unauthenticated);
        }
        tracing::info!(user = %username, "secret rotated");
        self.delivery
            .deliver(
                vec![username.to_owned()],
                Event::Revoked {
                    token: fingerprint(old),
                },
                None,
                Mode::Background,
            )
            .await;
        Ok(secret)
    }

    /// An operator's revocation: replaces the secret of `username`,
    /// whatever it is, with a new one (returned, for the operator to hand
    /// over), and ends every stream opened with the old one on every
    /// server. Unlike [`Accounts::rotate_secret`] the delivery is awaited,
    /// so the answer says where the revocation could not be delivered
    /// (those records are dead-lettered, to be replayed).
    pub async fn revoke_secret(&self, username: &str) -> Result<Revocation, ApiError> {
        let username = crate::names::normalize_username(username)?;
        let secret = new_secret();
        let old = self
            .store
            .reset_token(&username, &hash_secret(&secret))
            .await?
            .ok_or(ApiError::NotFound("user"))?;
        tracing::info!(user = %username, "secret revoked by an operator");
        let event = Event::Revoked {
            token: fingerprint(&old),
        };
        let delivered = self
            .delivery
            .deliver(
                vec![username.clone()],
                event,
                None,
                Mode::Awaited(Refused::DeadLetter),
            )
            .await;
        let undelivered = delivered
            .undelivered
            .into_iter()
            .map(|missed| match missed {
                Undelivered::Registry(e) => format!("registry lookup failed: {e}"),
                Undelivered::Node { node, error } => format!("node {node}: {error}"),
            })
            .collect();
        let revocation = Revocation {
            username,
            secret,
            local_sessions: delivered.local_sessions,
            nodes: delivered.nodes,
            undelivered,
        };
        Ok(revocation)
    }
}

/// What [`Accounts::revoke_secret`] did.
#[derive(Debug)]
pub struct Revocation {
    pub username: String,
    /// The new secret, shown once.
    pub secret: String,
    /// Sessions of the user on this server that were told.
    pub local_sessions: usize,
    /// Other servers holding sessions of the user that were told.
    pub nodes: Vec<String>,
    /// Where the revocation could not be delivered: streams opened there
    /// with the old secret stay open until its dead letter is replayed.
    pub undelivered: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        let secret = new_secret();
        assert_eq!(secret.len(), 64);
        assert_eq!(
            bearer_secret(&format!("Bearer {secret}")),
            Some(secret.as_str())
        );
        assert_eq!(
            bearer_secret(&format!("bearer {secret}")),
            Some(secret.as_str())
        );
        assert_eq!(bearer_secret(&format!("Basic {secret}")), None);
        assert_eq!(bearer_secret("Bearer abc"), None);
        assert_eq!(bearer_secret(&secret), None);
        assert_ne!(new_secret(), secret);
    }
}

//! The configuration the server runs with, typed: what each part of the
//! server reads. Operators do not write it: [`crate::settings`] builds it
//! from the settings they give, and holds every default (the `Default`
//! impls here are the default settings' configuration). A field that is a
//! setting names it; this module does not restate its default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use chat_store::sqlite::Durability;

use crate::settings::Settings;

#[derive(Debug, Clone)]
pub struct Config {
    /// Where the SQLite database lives (`data_dir`).
    pub data_dir: PathBuf,
    /// gRPC listen address (`grpc_addr`).
    pub grpc_addr: SocketAddr,
    /// HTTP listen address (`http_addr`).
    pub http_addr: SocketAddr,
    /// The certificate and key both listeners serve TLS with (`tls_cert`,
    /// `tls_key`); plaintext without them.
    pub tls: Option<crate::tls::TlsFiles>,
    /// fsync on every commit (`Full`) or only survive a process crash
    /// (`Normal`) (`durability`).
    pub durability: Durability,
    /// Store operations that run at once: SQLite's read connections,
    /// PostgreSQL's pool (`store_connections`).
    pub store_connections: usize,
    pub limits: Limits,
    pub cluster: ClusterConfig,
    /// The bearer token of the admin API (`/admin/…`: users, sessions,
    /// servers, the dead-letter queue) (`admin_token`). Without one the
    /// admin API answers 404 as if it did not exist.
    pub admin_token: Option<AdminToken>,
    /// How long a stopping server lets its sessions finish the sends they
    /// have read (commit and ack them) before it closes them anyway
    /// (`shutdown_grace_secs`).
    pub shutdown_grace: Duration,
    /// Deletes history older than a maximum age, in the background (see
    /// [`Retention`]; `retention_days`). Without one history is kept
    /// forever.
    pub retention: Option<Retention>,
}

/// The data retention policy: messages (text and events, of every
/// conversation) sent longer ago than `max_age` are deleted for everyone,
/// by a background task that runs once when the server starts and then
/// every `interval`. Seqs are not reused: a conversation's history simply
/// starts later, its `last_seq`, read cursors and unread counts (of the
/// messages that remain) stay right. Every server of a cluster may run it
/// on the shared store; deleting is idempotent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Messages older than this are deleted. No default: it is what turns
    /// the policy on. At least one second.
    pub max_age: Duration,
    /// The time between two passes. Default: 1 hour.
    pub interval: Duration,
    /// The most messages one delete removes: a pass deletes batch after
    /// batch until none is left, so no transaction holds the store (the
    /// single SQLite writer, or PostgreSQL row locks) for long. Default:
    /// 1000; at most 100 000.
    pub batch: usize,
}

impl Retention {
    /// The largest batch accepted.
    pub const MAX_BATCH: usize = 100_000;

    /// Keeps messages for `max_age`, with the default interval and batch.
    pub fn new(max_age: Duration) -> Self {
        Self {
            max_age,
            interval: Duration::from_secs(3600),
            batch: 1000,
        }
    }

    /// Refuses a policy that cannot work: a zero age would delete every
    /// message as it is sent, a zero interval would never rest, and a
    /// batch must delete something but stay short.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_age < Duration::from_secs(1) {
            return Err("the retention age must be at least one second".into());
        }
        if self.interval < Duration::from_millis(10) {
            return Err("the retention interval must be at least 10 ms".into());
        }
        if self.batch == 0 || self.batch > Self::MAX_BATCH {
            return Err(format!(
                "the retention batch must be between 1 and {}",
                Self::MAX_BATCH
            ));
        }
        Ok(())
    }
}

/// The admin API's bearer token. A newtype rather than a `String` so that
/// it never shows in a `Debug` print of the config (secrets are never
/// logged), and so that the only way to check a presented token is
/// [`AdminToken::matches`], which takes the same time wherever the two
/// differ.
#[derive(Clone)]
pub struct AdminToken(String);

impl AdminToken {
    /// The shortest token accepted: anything shorter is too easy to guess.
    pub const MIN_LEN: usize = 16;

    /// A token of at least [`Self::MIN_LEN`] visible ASCII characters (it
    /// travels in an HTTP header).
    pub fn new(token: impl Into<String>) -> Result<Self, String> {
        let token = token.into();
        if token.len() < Self::MIN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "the admin token must be at least {} visible ASCII characters without spaces",
                Self::MIN_LEN
            ));
        }
        Ok(Self(token))
    }

    /// Whether `presented` is this token. Both are hashed first and the
    /// digests compared with a loop that always looks at every byte, so
    /// the time taken says nothing about where they differ, nor (as the
    /// digests have a fixed length) about the token's length.
    pub fn matches(&self, presented: &str) -> bool {
        use sha2::{Digest, Sha256};
        let expected = Sha256::digest(self.0.as_bytes());
        let actual = Sha256::digest(presented.as_bytes());
        expected
            .iter()
            .zip(actual.iter())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

/// Which backends the server uses, and how it finds the other servers.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This server's id in the cluster: its sessions are registered under
    /// it and other servers publish to its inbox (`node_id`).
    pub node_id: String,
    /// `store`.
    pub store: StoreBackend,
    /// `registry`.
    pub registry: RegistryBackend,
    /// `bus`.
    pub bus: BusBackend,
    /// How long a session entry lives in the registry without a heartbeat.
    /// A crashed server's sessions disappear within this time
    /// (`session_ttl_secs`).
    pub session_ttl: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreBackend {
    Sqlite,
    /// `postgres://user@host:port/db`.
    Postgres {
        url: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryBackend {
    Memory,
    /// `redis://host:port/`; keys start with `prefix`.
    Redis {
        url: String,
        prefix: String,
    },
}

#[derive(Debug, Clone)]
pub enum BusBackend {
    Memory,
    /// Redis pub/sub; channels start with `prefix`.
    Redis {
        url: String,
        prefix: String,
    },
    Kafka(chat_cluster::bus::KafkaConfig),
}

impl ClusterConfig {
    /// The heartbeat that refreshes this node's registry entries: a third
    /// of the TTL, so that two missed beats still do not expire them.
    pub fn heartbeat(&self) -> Duration {
        (self.session_ttl / 3).max(Duration::from_millis(50))
    }

    /// Refuses combinations that cannot work: a shared bus needs a shared
    /// registry to know where to send.
    pub fn validate(&self) -> Result<(), String> {
        chat_cluster::check_node_id(&self.node_id).map_err(|e| e.to_string())?;
        if !matches!(self.bus, BusBackend::Memory) && self.registry == RegistryBackend::Memory {
            return Err("a Redis or Kafka bus needs the Redis registry (--registry redis)".into());
        }
        if self.session_ttl < Duration::from_millis(300) {
            return Err("the session TTL must be at least 300 ms".into());
        }
        Ok(())
    }
}

/// The default settings' cluster: one node, in-process backends, a new
/// random node id.
impl Default for ClusterConfig {
    fn default() -> Self {
        Settings::default()
            .cluster()
            .expect("the default settings are a valid configuration")
    }
}

/// Bounds on what one client can make the server hold or do.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest message body in bytes (`max_body_bytes`).
    pub max_body_bytes: usize,
    /// Largest protobuf message the gRPC server decodes: room for the
    /// largest body, at least [`Self::MIN_FRAME_BYTES`].
    pub max_frame_bytes: usize,
    /// Frames waiting for one slow session before it is disconnected
    /// (`session_queue`).
    pub session_queue: usize,
    /// Sends of one stream waiting to be committed (in order) before the
    /// server stops reading that stream. Not a setting:
    /// [`Self::QUEUED_SENDS_PER_SESSION`].
    pub queued_sends_per_session: usize,
    /// Largest HTTP request body: room for the largest body, at least
    /// [`Self::MIN_HTTP_BODY_BYTES`].
    pub max_http_body_bytes: usize,
    /// Most members of one group, the owner included
    /// (`max_group_members`).
    pub max_group_members: usize,
    /// Most groups one user belongs to (`max_groups_per_user`).
    pub max_groups_per_user: usize,
    /// Members of groups at most this large see each other's presence;
    /// in larger groups only direct contacts do. Presence costs every
    /// connect a message to each online contact, so a group of N members
    /// all connecting costs N² of them (`presence_group_members`).
    pub presence_group_members: usize,
    /// Dead letters the store keeps before new ones are refused (logged
    /// at error level and counted in `chat_dead_letter_failures_total`):
    /// a bus outage must not fill the disk (`max_dead_letters`).
    pub max_dead_letters: u64,
    /// Registrations one client address may make per minute (HTTP and
    /// gRPC together); more are refused with 429 / `RESOURCE_EXHAUSTED`
    /// and the time to wait. 0: no limit (`registrations_per_minute`).
    pub registrations_per_minute: u32,
    /// `Connect` streams one client address may open per minute. 0: no
    /// limit (`connects_per_minute`).
    pub connects_per_minute: u32,
    /// Messages one user may send per second, from all devices together.
    /// 0: no limit (`sends_per_second`).
    pub sends_per_second: u32,
}

impl Limits {
    /// The smallest gRPC frame limit, whatever the body limit.
    pub const MIN_FRAME_BYTES: usize = 64 * 1024;
    /// The smallest HTTP request body limit, whatever the body limit.
    pub const MIN_HTTP_BODY_BYTES: usize = 16 * 1024;
    /// Sends of one stream queued before the server stops reading it.
    pub const QUEUED_SENDS_PER_SESSION: usize = 64;
}

/// The default settings' limits.
impl Default for Limits {
    fn default() -> Self {
        Settings::default().limits()
    }
}

/// The default settings' configuration (a new random node id each time).
impl Default for Config {
    fn default() -> Self {
        Settings::default()
            .into_config()
            .expect("the default settings are a valid configuration")
    }
}

#[cfg(test)]
mod tests {
    use super::{AdminToken, Retention};
    use std::time::Duration;

    #[test]
    fn retention_defaults_and_bounds() {
        let policy = Retention::new(Duration::from_secs(30 * 86_400));
        assert_eq!(
            (policy.interval, policy.batch),
            (Duration::from_secs(3600), 1000)
        );
        assert_eq!(policy.validate(), Ok(()));
        let with = |change: fn(&mut Retention)| {
            let mut policy = policy.clone();
            change(&mut policy);
            policy.validate()
        };
        assert!(with(|p| p.max_age = Duration::ZERO).is_err());
        assert!(with(|p| p.max_age = Duration::from_millis(999)).is_err());
        assert!(with(|p| p.interval = Duration::ZERO).is_err());
        assert!(with(|p| p.batch = 0).is_err());
        assert!(with(|p| p.batch = Retention::MAX_BATCH + 1).is_err());
        assert_eq!(with(|p| p.batch = Retention::MAX_BATCH), Ok(()));
    }

    #[test]
    fn admin_tokens_are_checked_and_never_shown() {
        assert!(AdminToken::new("short").is_err());
        assert!(AdminToken::new("sixteen chars ok").is_err(), "no spaces");
        let token = AdminToken::new("0123456789abcdef").unwrap();
        assert!(token.matches("0123456789abcdef"));
        assert!(!token.matches("0123456789abcdeF"));
        assert!(!token.matches("0123456789abcdef0"));
        assert!(!token.matches(""));
        assert_eq!(format!("{token:?}"), "AdminToken(***)");
    }
}

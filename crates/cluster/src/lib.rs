//! What ties chat servers together.
//!
//! - [`registry`]: the session registry, which sessions of which user are
//!   connected to which server ("node"). Entries expire unless refreshed by
//!   the node's heartbeat, so a crashed node's sessions vanish on their own.
//!   Backends: in-process ([`registry::MemoryRegistry`]) and Redis.
//! - [`bus`]: delivery records from one node to another node's inbox.
//!   Backends: in-process ([`bus::MemoryBus`]), Redis pub/sub and Kafka
//!   (one single-partition inbox topic per node).
//!
//! Neither knows what a chat message is: the registry deals in usernames
//! and node ids, the bus in opaque payloads. This crate is the only one
//! that knows Redis and Kafka.

pub mod bus;
pub mod registry;

pub use bus::{Bus, Inbox};
pub use registry::{NodeEntry, SessionEntry, SessionRegistry};

/// The id of one server of a cluster.
pub type NodeId = String;

/// Errors of every registry and bus backend.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The backend cannot be reached or refused the operation; retrying
    /// later may succeed.
    #[error("{backend} unavailable: {detail}")]
    Unavailable {
        backend: &'static str,
        detail: String,
    },
    /// Bad configuration (a malformed URL, an invalid node id).
    #[error("invalid cluster configuration: {0}")]
    Config(String),
}

pub type Result<T, E = ClusterError> = std::result::Result<T, E>;

impl From<redis::RedisError> for ClusterError {
    fn from(e: redis::RedisError) -> Self {
        ClusterError::Unavailable {
            backend: "redis",
            detail: e.to_string(),
        }
    }
}

impl From<rdkafka::error::KafkaError> for ClusterError {
    fn from(e: rdkafka::error::KafkaError) -> Self {
        ClusterError::Unavailable {
            backend: "kafka",
            detail: e.to_string(),
        }
    }
}

/// Node ids become Redis keys and Kafka topic names: keep them to
/// `A-Z a-z 0-9 . _ -`, 1 to 100 characters.
pub fn check_node_id(node: &str) -> Result<()> {
    let ok = !node.is_empty()
        && node.len() <= 100
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ClusterError::Config(format!(
            "node id {node:?} must be 1 to 100 characters of A-Z a-z 0-9 . _ -"
        )))
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

//! Settings of the server. Every field states its default; the binary fills
//! them from flags and `CHAT_…` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;

pub use chat_store::sqlite::Durability;

#[derive(Debug, Clone)]
pub struct Config {
    /// Where the SQLite database lives. Default: `./data`.
    pub data_dir: PathBuf,
    /// gRPC listen address. Default: `127.0.0.1:50050`.
    pub grpc_addr: SocketAddr,
    /// HTTP listen address. Default: `127.0.0.1:3000`.
    pub http_addr: SocketAddr,
    /// fsync on every commit (`Full`, default) or only survive a process
    /// crash (`Normal`).
    pub durability: Durability,
    pub limits: Limits,
}

/// Bounds on what one client can make the server hold or do.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest message body in bytes. Default: 4096.
    pub max_body_bytes: usize,
    /// Largest protobuf message the gRPC server decodes. Default: 64 KiB.
    pub max_frame_bytes: usize,
    /// Frames waiting for one slow session before it is disconnected.
    /// Default: 1024.
    pub session_queue: usize,
    /// Sends of one stream being committed at once. Default: 64.
    pub inflight_sends_per_session: usize,
    /// Largest HTTP request body. Default: 16 KiB.
    pub max_http_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 4096,
            max_frame_bytes: 64 * 1024,
            session_queue: 1024,
            inflight_sends_per_session: 64,
            max_http_body_bytes: 16 * 1024,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50050)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 3000)),
            durability: Durability::Full,
            limits: Limits::default(),
        }
    }
}

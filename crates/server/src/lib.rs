//! The chat server as a library: `main` is a thin wrapper around [`run`], and
//! tests and benchmarks start the same server in-process on port 0.
//!
//! # Layout
//!
//! - [`config`]: every setting, with its default.
//! - [`names`]: what a valid username, display name and phone look like.
//! - [`auth`]: secrets: generation, hashing, and the bearer check.
//! - [`error`]: [`ApiError`], the one error type of the request handlers,
//!   with one mapping to `tonic::Status` and one to the HTTP envelope.
//! - [`sessions`]: the live sessions of this node and delivery to them.
//! - [`chat`]: the chat operations shared by the stream and the unary RPCs
//!   (send, mark read); the store first, then delivery.
//! - [`grpc`]: the `chat.v1` services. Only this module sees protobuf.
//! - [`http`]: the JSON API (registration, profiles, health).

pub mod auth;
pub mod chat;
pub mod config;
pub mod error;
pub mod grpc;
pub mod http;
pub mod names;
pub mod sessions;

use std::future::Future;
use std::sync::Arc;

use chat_store::sqlite::{SqliteConfig, SqliteStore};
use chat_store::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use error::ApiError;

/// Errors that stop the server from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot open the store: {0}")]
    Store(#[from] chat_store::StoreError),
    #[error("cannot listen: {0}")]
    Listen(String),
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("HTTP server failed: {0}")]
    Http(#[from] std::io::Error),
}

/// The sockets the server serves on, bound by the caller so that tests can
/// bind port 0 and learn the port before the server starts.
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
}

impl Listeners {
    /// Binds the addresses of `config`.
    pub async fn bind(config: &Config) -> Result<Self, ServerError> {
        let bind = |addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|e| ServerError::Listen(format!("{addr}: {e}")))
        };
        Ok(Self {
            grpc: bind(config.grpc_addr).await?,
            http: bind(config.http_addr).await?,
        })
    }
}

/// What every request handler shares.
pub struct AppState {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub sessions: sessions::LocalSessions,
    /// Cancelled when the server shuts down; every session watches it.
    pub shutdown: CancellationToken,
}

/// Opens the store named by `config`.
pub fn open_store(config: &Config) -> Result<Arc<dyn Store>, ServerError> {
    let mut sqlite = SqliteConfig::new(config.data_dir.join("chat.db"));
    sqlite.durability = config.durability;
    Ok(Arc::new(SqliteStore::open(sqlite)?))
}

/// Serves gRPC and HTTP on `listeners` until `shutdown` completes, then
/// closes every session and returns once both servers have stopped.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let store = open_store(&config)?;
    let token = CancellationToken::new();
    let state = Arc::new(AppState {
        config,
        store,
        sessions: sessions::LocalSessions::default(),
        shutdown: token.clone(),
    });
    tracing::info!(
        grpc = %listeners.grpc.local_addr().map_err(ServerError::Http)?,
        http = %listeners.http.local_addr().map_err(ServerError::Http)?,
        "chat server listening"
    );

    let signal = token.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down");
        signal.cancel();
    });

    let grpc = grpc::serve(
        state.clone(),
        listeners.grpc,
        token.clone().cancelled_owned(),
    );
    let http = http::serve(
        state.clone(),
        listeners.http,
        token.clone().cancelled_owned(),
    );
    let (grpc, http) = tokio::join!(grpc, http);
    // Whichever server stopped first (an error), stop the other one too.
    token.cancel();
    grpc?;
    http?;
    Ok(())
}

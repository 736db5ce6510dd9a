//! The chat server as a library: `main` is a thin wrapper around [`run`], and
//! tests and benchmarks start the same server in-process on port 0.
//!
//! # Layout
//!
//! - [`config`]: the configuration the server runs with.
//! - [`settings`]: the same as an operator writes it (TOML file, `CHAT_…`
//!   variables, flags), checked into a [`Config`].
//! - [`names`]: what a valid username, display name and phone look like.
//! - [`auth`]: secrets: generation, hashing, and the bearer check.
//! - [`error`]: [`ApiError`], the one error type of the request handlers,
//!   with one mapping to `tonic::Status` and one to the HTTP envelope.
//! - [`sessions`]: the live sessions of this node and delivery to them.
//! - [`chat`]: the chat operations shared by the stream and the unary RPCs
//!   (send, mark read); the store first, then delivery.
//! - [`presence`]: who of a user's contacts is online, pushed on change and
//!   swept on every heartbeat.
//! - [`routing`]: delivery across the cluster: local sessions directly,
//!   other nodes' sessions through the registry and the bus; this node's
//!   inbox and heartbeat.
//! - [`dead_letters`]: the dead-letter queue: records routing could not
//!   process, stored for an operator to inspect and replay.
//! - [`retention`]: the optional background deletion of old history.
//! - [`membership`]: this server's entry in the registry, announced on
//!   every heartbeat, for operators listing the cluster's servers.
//! - [`grpc`]: the `chat.v1` services. Only this module sees protobuf.
//! - [`http`]: the JSON API (registration, profiles, health, metrics, and
//!   the admin API behind the admin token).
//! - [`telemetry`]: this node's metrics; [`health`]: whether each backend
//!   answers now (`/readyz`).

pub mod auth;
pub mod chat;
pub mod config;
pub mod dead_letters;
pub mod error;
pub mod grpc;
pub mod health;
pub mod http;
pub mod membership;
pub mod names;
pub mod presence;
pub mod rate;
mod record;
pub mod retention;
pub mod routing;
pub mod sessions;
pub mod settings;
pub mod telemetry;

use std::future::Future;
use std::sync::Arc;

use chat_cluster::{Bus, SessionRegistry};
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
    #[error("cluster backend: {0}")]
    Cluster(#[from] chat_cluster::ClusterError),
    #[error("invalid configuration: {0}")]
    Config(String),
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
    pub registry: Arc<dyn SessionRegistry>,
    pub bus: Arc<dyn Bus>,
    /// This node's metrics (`/metrics`).
    pub metrics: telemetry::Metrics,
    /// Dead letters on their way to the store.
    pub dead_letters: dead_letters::DeadLetterQueue,
    /// The contacts this node's sessions watch, for the presence sweep.
    pub presence: presence::PresenceWatch,
    /// Cancelled when the server is asked to stop: the listeners stop
    /// accepting, `/readyz` says 503, and every session finishes the sends
    /// it has read, then ends with `UNAVAILABLE` (reconnect elsewhere).
    pub draining: CancellationToken,
    /// Cancelled once the sessions have drained or the grace period is
    /// over: whatever still runs stops now.
    pub shutdown: CancellationToken,
    /// The session tasks, so that a stop can wait for them to drain.
    pub session_tasks: tokio_util::task::TaskTracker,
    /// Registrations, connects and sends per client address or user.
    pub rates: rate::Rates,
    /// What this server announces about itself in the registry.
    pub membership: membership::Membership,
}

impl AppState {
    pub fn node_id(&self) -> &str {
        &self.config.cluster.node_id
    }
}

/// The backends a server runs on. Tests build them themselves to share an
/// in-process registry and bus between several servers of one process.
#[derive(Clone)]
pub struct Backends {
    pub store: Arc<dyn Store>,
    pub registry: Arc<dyn SessionRegistry>,
    pub bus: Arc<dyn Bus>,
}

impl Backends {
    /// Connects to the backends `config` names.
    pub async fn connect(config: &Config) -> Result<Self, ServerError> {
        use config::{BusBackend, RegistryBackend, StoreBackend};
        let cluster = &config.cluster;
        let store: Arc<dyn Store> = match &cluster.store {
            StoreBackend::Sqlite => {
                let mut sqlite = SqliteConfig::new(config.data_dir.join("chat.db"));
                sqlite.durability = config.durability;
                sqlite.read_pool_size = config.store_connections;
                Arc::new(SqliteStore::open(sqlite)?)
            }
            StoreBackend::Postgres { url } => {
                let mut postgres = chat_store::postgres::PostgresConfig::new(url);
                postgres.pool_size = config.store_connections;
                Arc::new(chat_store::postgres::PostgresStore::connect(postgres).await?)
            }
        };
        let registry: Arc<dyn SessionRegistry> = match &cluster.registry {
            RegistryBackend::Memory => Arc::new(chat_cluster::registry::MemoryRegistry::new(
                cluster.session_ttl,
            )),
            RegistryBackend::Redis { url, prefix } => Arc::new(
                chat_cluster::registry::RedisRegistry::connect(url, prefix, cluster.session_ttl)
                    .await?,
            ),
        };
        let bus: Arc<dyn Bus> = match &cluster.bus {
            BusBackend::Memory => Arc::new(chat_cluster::bus::MemoryBus::default()),
            BusBackend::Redis { url, prefix } => {
                Arc::new(chat_cluster::bus::RedisBus::connect(url, prefix).await?)
            }
            BusBackend::Kafka(kafka) => {
                Arc::new(chat_cluster::bus::KafkaBus::connect(kafka.clone())?)
            }
        };
        Ok(Self {
            store,
            registry,
            bus,
        })
    }
}

/// Serves gRPC and HTTP on `listeners` until `shutdown` completes, with the
/// backends `config` names.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    config.cluster.validate().map_err(ServerError::Config)?;
    if let Some(retention) = &config.retention {
        retention.validate().map_err(ServerError::Config)?;
    }
    let backends = Backends::connect(&config).await?;
    run_with(config, backends, listeners, shutdown).await
}

/// Serves gRPC and HTTP on `listeners` with `backends` until `shutdown`
/// completes, then closes every session and returns once both servers
/// have stopped.
pub async fn run_with(
    config: Config,
    backends: Backends,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    if let Some(retention) = &config.retention {
        retention.validate().map_err(ServerError::Config)?;
    }
    let token = CancellationToken::new();
    let draining = CancellationToken::new();
    let (dead_letter_queue, dead_letters) = dead_letters::queue();
    let rates = rate::Rates::new(&config.limits);
    let membership = membership::Membership::of(&listeners)?;
    let state = Arc::new(AppState {
        config,
        store: backends.store,
        sessions: sessions::LocalSessions::default(),
        registry: backends.registry,
        bus: backends.bus,
        metrics: telemetry::Metrics::new(),
        dead_letters: dead_letter_queue,
        presence: presence::PresenceWatch::default(),
        draining: draining.clone(),
        shutdown: token.clone(),
        session_tasks: tokio_util::task::TaskTracker::new(),
        rates,
        membership,
    });
    // This node's inbox is open before its first session can exist.
    let inbox = state.bus.subscribe(state.node_id()).await?;
    let background = tokio_util::task::TaskTracker::new();
    background.spawn(routing::read_inbox(state.clone(), inbox));
    background.spawn(routing::heartbeat(state.clone()));
    background.spawn(dead_letters::write_dead_letters(
        state.clone(),
        dead_letters,
    ));
    if let Some(policy) = state.config.retention.clone() {
        background.spawn(retention::run(state.clone(), policy));
    }
    background.spawn(telemetry::upkeep(state.clone()));
    background.close();
    tracing::info!(
        node = %state.node_id(),
        grpc = %listeners.grpc.local_addr().map_err(ServerError::Http)?,
        http = %listeners.http.local_addr().map_err(ServerError::Http)?,
        "chat server listening"
    );

    // Stopping has two steps: drain (stop accepting, let sessions finish
    // what they read), then, once they have or the grace period is over,
    // stop everything.
    let stopping = state.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown => {}
            _ = stopping.draining.cancelled() => {}
        }
        let grace = stopping.config.shutdown_grace;
        tracing::info!(
            sessions = stopping.sessions.total(),
            ?grace,
            "shutting down: draining the sessions"
        );
        stopping.draining.cancel();
        stopping.session_tasks.close();
        if tokio::time::timeout(grace, stopping.session_tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                sessions = stopping.sessions.total(),
                "the grace period is over: closing the sessions still open"
            );
        }
        stopping.shutdown.cancel();
    });

    let grpc = grpc::serve(
        state.clone(),
        listeners.grpc,
        draining.clone().cancelled_owned(),
    );
    // HTTP serves on while the sessions drain, so that `/readyz` tells
    // load balancers to send no one here, and `/metrics` shows the drain.
    let http = http::serve(
        state.clone(),
        listeners.http,
        token.clone().cancelled_owned(),
    );
    let servers = async { tokio::join!(grpc, http) };
    // Both servers wait for their open connections to finish. A client
    // that stopped reading can hold one open past the stop: once
    // everything else has stopped, it gets a moment, not forever.
    let abandon = async {
        token.cancelled().await;
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    };
    let (grpc, http) = tokio::select! {
        results = servers => results,
        _ = abandon => {
            tracing::warn!("connections still open after the stop: closing them");
            (Ok(()), Ok(()))
        }
    };
    // Whichever server stopped first (an error), stop the other one too.
    draining.cancel();
    token.cancel();
    background.wait().await;
    // The inbox reader has stopped: what the bus keeps for this node's
    // inbox goes with it (a node that crashes leaves it to the bus's own
    // bounds; see ARCHITECTURE.md, "Inbox topics").
    if let Err(e) = state.bus.retire(state.node_id()).await {
        tracing::warn!(node = %state.node_id(), error = %e, "the bus kept this node's inbox");
    }
    grpc?;
    http?;
    tracing::info!(node = %state.node_id(), "chat server stopped");
    Ok(())
}

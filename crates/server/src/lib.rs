//! The chat server as a library: `main` is a thin wrapper around [`run`], and
//! tests and benchmarks start the same server in-process on port 0.
//!
//! # Layout
//!
//! - [`config`]: the configuration the server runs with.
//! - [`settings`]: the same as an operator writes it (TOML file, `CHAT_…`
//!   variables, flags), checked into a [`Config`].
//! - [`names`]: what a valid username, display name and phone look like.
//! - [`auth`]: [`auth::Accounts`], registration, profiles and secrets
//!   (generation, hashing, the bearer check, rotation, revocation).
//! - [`error`]: [`ApiError`], the one error type of the request handlers,
//!   with one mapping to `tonic::Status` and one to the HTTP envelope.
//! - [`sessions`]: the live sessions of this node and delivery to them.
//! - [`chat`]: [`chat::Chat`], the chat operations shared by every
//!   transport (send, edit, mark read, typing, groups, history); the store
//!   first, then delivery.
//! - [`presence`]: who of a user's contacts is online, pushed on change and
//!   swept on every heartbeat.
//! - [`routing`]: [`routing::Delivery`], delivery across the cluster:
//!   local sessions directly,
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
//! - [`tls`]: the certificate both listeners serve TLS with, reloaded
//!   without a restart, and the TLS accept loop.
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
pub mod tls;

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
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
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
    /// Registration, profiles and secrets ([`auth::Accounts`]).
    pub accounts: auth::Accounts,
    /// Conversations, messages and groups ([`chat::Chat`]).
    pub chat: chat::Chat,
    /// Events to the sessions of this node and the others
    /// ([`routing::Delivery`]): the sessions, the registry, the bus.
    pub delivery: Arc<routing::Delivery>,
    /// The dead-letter queue's letters ([`dead_letters::DeadLetters`]).
    pub dead_letters: dead_letters::DeadLetters,
    /// Who of a user's contacts is online ([`presence::Presence`]).
    pub presence: presence::Presence,
    /// This node's metrics (`/metrics`).
    pub metrics: Arc<telemetry::Metrics>,
    /// The backends, for what concerns the node rather than a request:
    /// health probes, metrics, retention, the inbox, membership. Requests
    /// go through the services above.
    pub(crate) backends: Backends,
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
    pub rates: Arc<rate::Rates>,
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
    let rates = Arc::new(rate::Rates::new(&config.limits));
    let membership = membership::Membership::of(&listeners)?;
    let metrics = Arc::new(telemetry::Metrics::new());
    let delivery = Arc::new(routing::Delivery::new(
        config.cluster.node_id.clone(),
        backends.registry.clone(),
        backends.bus.clone(),
        metrics.clone(),
        dead_letter_queue,
        token.clone(),
    ));
    let store = backends.store.clone();
    let state = Arc::new(AppState {
        accounts: auth::Accounts::new(store.clone(), delivery.clone(), rates.clone()),
        chat: chat::Chat::new(
            store.clone(),
            delivery.clone(),
            config.limits.clone(),
            rates.clone(),
        ),
        dead_letters: dead_letters::DeadLetters::new(
            store.clone(),
            delivery.clone(),
            config.limits.max_dead_letters,
        ),
        presence: presence::Presence::new(
            store,
            delivery.clone(),
            config.limits.presence_group_members,
        ),
        delivery,
        metrics,
        backends,
        config,
        draining: draining.clone(),
        shutdown: token.clone(),
        session_tasks: tokio_util::task::TaskTracker::new(),
        rates,
        membership,
    });
    // This node's inbox is open before its first session can exist.
    let inbox = state.backends.bus.subscribe(state.node_id()).await?;
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
    let certificates = match &state.config.tls {
        Some(files) => {
            let certificates = tls::Certificates::load(files.clone())?;
            background.spawn(tls::watch(certificates.clone(), token.clone()));
            Some(certificates)
        }
        None => None,
    };
    background.close();
    let grpc_addr = listeners.grpc.local_addr().map_err(ServerError::Http)?;
    let http_addr = listeners.http.local_addr().map_err(ServerError::Http)?;
    tracing::info!(
        node = %state.node_id(),
        grpc = %grpc_addr,
        http = %http_addr,
        tls = certificates.is_some(),
        "chat server listening"
    );
    if certificates.is_none() && !(grpc_addr.ip().is_loopback() && http_addr.ip().is_loopback()) {
        tracing::warn!(
            grpc = %grpc_addr,
            http = %http_addr,
            "serving in plaintext on a non-loopback address: secrets and messages cross \
             the network in clear text (set tls_cert and tls_key)"
        );
    }

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
            sessions = stopping.delivery.sessions.total(),
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
                sessions = stopping.delivery.sessions.total(),
                "the grace period is over: closing the sessions still open"
            );
        }
        stopping.shutdown.cancel();
    });

    let grpc_tls = certificates.as_ref().map(|c| c.grpc()).transpose()?;
    let http_tls = certificates.as_ref().map(|c| c.http()).transpose()?;
    let grpc = grpc::serve(state.clone(), listeners.grpc, grpc_tls, draining.clone());
    // HTTP serves on while the sessions drain, so that `/readyz` tells
    // load balancers to send no one here, and `/metrics` shows the drain.
    let http = http::serve(state.clone(), listeners.http, http_tls, token.clone());
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
    if let Err(e) = state.backends.bus.retire(state.node_id()).await {
        tracing::warn!(node = %state.node_id(), error = %e, "the bus kept this node's inbox");
    }
    grpc?;
    http?;
    tracing::info!(node = %state.node_id(), "chat server stopped");
    Ok(())
}

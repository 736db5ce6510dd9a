//! `chat-server`: with no flags, a single node with its data in `./data`,
//! gRPC on 127.0.0.1:50050 and HTTP on 127.0.0.1:3000.
//!
//! `chat-server admin …` instead operates a running server through its
//! admin HTTP API (see `admin_cli.rs`).

mod admin_cli;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use std::time::Duration;

use anyhow::Context;
use chat_server::config::{
    AdminToken, BusBackend, ClusterConfig, Durability, Limits, RegistryBackend, StoreBackend,
};
use chat_server::{Config, Listeners};
use clap::{Parser, Subcommand};

/// Without a subcommand the server runs, configured by the flags below;
/// they apply to the server only.
#[derive(Parser, Debug)]
#[command(
    name = "chat-server",
    version,
    about = "A chat server: gRPC chat, HTTP registration, durable history"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: Args,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Operate a running server through its admin HTTP API.
    Admin(admin_cli::AdminArgs),
}

#[derive(clap::Args, Debug)]
struct Args {
    /// Directory of the SQLite database.
    #[arg(long, env = "CHAT_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// gRPC listen address (use 0.0.0.0:50050 to serve other machines).
    #[arg(long, env = "CHAT_GRPC_ADDR", default_value = "127.0.0.1:50050")]
    grpc_addr: SocketAddr,
    /// HTTP listen address.
    #[arg(long, env = "CHAT_HTTP_ADDR", default_value = "127.0.0.1:3000")]
    http_addr: SocketAddr,
    /// Largest message body in bytes.
    #[arg(long, env = "CHAT_MAX_BODY_BYTES", default_value_t = Limits::default().max_body_bytes)]
    max_body_bytes: usize,
    /// Frames queued for one slow session before it is disconnected.
    #[arg(long, env = "CHAT_SESSION_QUEUE", default_value_t = Limits::default().session_queue)]
    session_queue: usize,
    /// `full`: fsync every commit (survives power loss); `normal`: survive a
    /// crash of the server process only.
    #[arg(long, env = "CHAT_DURABILITY", default_value = "full", value_parser = ["full", "normal"])]
    durability: String,

    /// This server's id in the cluster (default: `node-` + 8 random hex
    /// digits). Letters, digits, `.`, `_`, `-`.
    #[arg(long, env = "CHAT_NODE_ID")]
    node_id: Option<String>,
    /// Where durable data lives.
    #[arg(long, env = "CHAT_STORE", default_value = "sqlite", value_parser = ["sqlite", "postgres"])]
    store: String,
    /// PostgreSQL URL for `--store postgres`, e.g. postgres://chat@db:5432/chat.
    #[arg(long, env = "CHAT_POSTGRES_URL")]
    postgres_url: Option<String>,
    /// Where sessions are registered: `memory` (single node) or `redis`.
    #[arg(long, env = "CHAT_REGISTRY", default_value = "memory", value_parser = ["memory", "redis"])]
    registry: String,
    /// Redis URL for the registry and the Redis bus, e.g. redis://cache:6379/.
    #[arg(long, env = "CHAT_REDIS_URL")]
    redis_url: Option<String>,
    /// Prefix of every Redis key and channel.
    #[arg(long, env = "CHAT_REDIS_PREFIX", default_value = "chat:")]
    redis_prefix: String,
    /// How servers reach each other: `memory` (single node), `redis`
    /// (pub/sub) or `kafka` (an inbox topic per server).
    #[arg(long, env = "CHAT_BUS", default_value = "memory", value_parser = ["memory", "redis", "kafka"])]
    bus: String,
    /// Kafka bootstrap servers for `--bus kafka`, e.g. kafka:9092.
    #[arg(long, env = "CHAT_KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// Prefix of the per-server inbox topics.
    #[arg(long, env = "CHAT_KAFKA_TOPIC_PREFIX", default_value = "chat-inbox-")]
    kafka_topic_prefix: String,
    /// Producer linger.ms.
    #[arg(long, env = "CHAT_KAFKA_LINGER_MS", default_value_t = 1)]
    kafka_linger_ms: u64,
    /// Consumer fetch.wait.max.ms (keep it small with brokers that do not
    /// answer a waiting fetch when data arrives).
    #[arg(long, env = "CHAT_KAFKA_FETCH_WAIT_MS", default_value_t = 100)]
    kafka_fetch_wait_ms: u64,
    /// Seconds a session stays registered without a heartbeat; a crashed
    /// server's sessions disappear within this time.
    #[arg(long, env = "CHAT_SESSION_TTL_SECS", default_value_t = 15)]
    session_ttl_secs: u64,
    /// Most members of one group, the owner included.
    #[arg(long, env = "CHAT_MAX_GROUP_MEMBERS", default_value_t = Limits::default().max_group_members)]
    max_group_members: usize,
    /// Most groups one user belongs to.
    #[arg(long, env = "CHAT_MAX_GROUPS_PER_USER", default_value_t = Limits::default().max_groups_per_user)]
    max_groups_per_user: usize,
    /// Members of groups at most this large see each other's presence
    /// (online/offline); in larger groups only direct contacts do.
    #[arg(long, env = "CHAT_PRESENCE_GROUP_MEMBERS", default_value_t = Limits::default().presence_group_members)]
    presence_group_members: usize,
    /// Registrations per client address per minute (0: no limit).
    #[arg(long, env = "CHAT_REGISTRATIONS_PER_MINUTE", default_value_t = Limits::default().registrations_per_minute)]
    registrations_per_minute: u32,
    /// `Connect` streams opened per client address per minute (0: no limit).
    #[arg(long, env = "CHAT_CONNECTS_PER_MINUTE", default_value_t = Limits::default().connects_per_minute)]
    connects_per_minute: u32,
    /// Messages per user per second (0: no limit).
    #[arg(long, env = "CHAT_SENDS_PER_SECOND", default_value_t = Limits::default().sends_per_second)]
    sends_per_second: u32,
    /// Enables the admin HTTP API (`/admin/…`: users, sessions, servers,
    /// dead letters) for requests with `Authorization: Bearer <token>`; at
    /// least 16 characters. Without it the admin API does not exist (404).
    #[arg(long, env = "CHAT_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

fn cluster_config(args: &Args) -> anyhow::Result<ClusterConfig> {
    let need = |value: &Option<String>, flag: &str, why: &str| {
        value
            .clone()
            .with_context(|| format!("{why} needs {flag} (or its CHAT_ variable)"))
    };
    let defaults = ClusterConfig::default();
    let store = match args.store.as_str() {
        "postgres" => StoreBackend::Postgres {
            url: need(&args.postgres_url, "--postgres-url", "--store postgres")?,
        },
        _ => StoreBackend::Sqlite,
    };
    let registry = match args.registry.as_str() {
        "redis" => RegistryBackend::Redis {
            url: need(&args.redis_url, "--redis-url", "--registry redis")?,
            prefix: args.redis_prefix.clone(),
        },
        _ => RegistryBackend::Memory,
    };
    let bus = match args.bus.as_str() {
        "redis" => BusBackend::Redis {
            url: need(&args.redis_url, "--redis-url", "--bus redis")?,
            prefix: args.redis_prefix.clone(),
        },
        "kafka" => {
            let mut kafka = chat_cluster::bus::KafkaConfig::new(need(
                &args.kafka_brokers,
                "--kafka-brokers",
                "--bus kafka",
            )?);
            kafka.topic_prefix = args.kafka_topic_prefix.clone();
            kafka.linger_ms = args.kafka_linger_ms;
            kafka.fetch_wait_ms = args.kafka_fetch_wait_ms;
            BusBackend::Kafka(kafka)
        }
        _ => BusBackend::Memory,
    };
    let cluster = ClusterConfig {
        node_id: args.node_id.clone().unwrap_or(defaults.node_id),
        store,
        registry,
        bus,
        session_ttl: Duration::from_secs(args.session_ttl_secs),
    };
    cluster.validate().map_err(anyhow::Error::msg)?;
    Ok(cluster)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Admin(admin)) => admin_cli::run(admin).await,
        None => match serve(cli.serve).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                // As `main` returning the error would print it.
                eprintln!("Error: {e:?}");
                ExitCode::FAILURE
            }
        },
    }
}

async fn serve(args: Args) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        // Colours only on a terminal, never in log files or pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CHAT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    if args.max_body_bytes == 0
        || args.session_queue == 0
        || args.max_group_members == 0
        || args.max_groups_per_user == 0
    {
        anyhow::bail!(
            "--max-body-bytes, --session-queue, --max-group-members and --max-groups-per-user must be positive"
        );
    }
    let cluster = cluster_config(&args)?;
    let admin_token = args
        .admin_token
        .clone()
        .map(AdminToken::new)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--admin-token: {e}"))?;
    let config = Config {
        data_dir: args.data_dir,
        grpc_addr: args.grpc_addr,
        http_addr: args.http_addr,
        durability: if args.durability == "normal" {
            Durability::Normal
        } else {
            Durability::Full
        },
        limits: Limits {
            max_body_bytes: args.max_body_bytes,
            session_queue: args.session_queue,
            max_group_members: args.max_group_members,
            max_groups_per_user: args.max_groups_per_user,
            presence_group_members: args.presence_group_members,
            registrations_per_minute: args.registrations_per_minute,
            connects_per_minute: args.connects_per_minute,
            sends_per_second: args.sends_per_second,
            ..Limits::default()
        },
        cluster,
        admin_token,
    };
    let listeners = Listeners::bind(&config)
        .await
        .context("binding the listen addresses")?;
    chat_server::run(config, listeners, shutdown_signal()).await?;
    Ok(())
}

/// Completes on SIGINT (ctrl-c) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

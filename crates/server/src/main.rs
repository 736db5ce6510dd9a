//! `chat-server`: with no flags, a single node with its data in `./data`,
//! gRPC on 127.0.0.1:50050 and HTTP on 127.0.0.1:3000.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use chat_server::config::{Durability, Limits};
use chat_server::{Config, Listeners};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "chat-server",
    version,
    about = "A chat server: gRPC chat, HTTP registration, durable history"
)]
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CHAT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    if args.max_body_bytes == 0 || args.session_queue == 0 {
        anyhow::bail!("--max-body-bytes and --session-queue must be positive");
    }
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
            ..Limits::default()
        },
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

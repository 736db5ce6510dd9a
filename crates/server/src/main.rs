//! `chat-server`: with no flags, a single node with its data in `./data`,
//! gRPC on 127.0.0.1:50050 and HTTP on 127.0.0.1:3000.
//!
//! `chat-server admin …` instead operates a running server through its
//! admin HTTP API (see `admin_cli.rs`).

mod admin_cli;

use std::process::ExitCode;

use anyhow::Context;
use chat_server::settings::{LogFormat, Overrides, Settings};
use chat_server::Listeners;
use clap::{Parser, Subcommand};

/// Without a subcommand the server runs, configured by the flags below
/// (each also a `CHAT_…` variable and a key of the `--config` file); they
/// apply to the server and `config` only.
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
    serve: Overrides,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Operate a running server through its admin HTTP API.
    Admin(admin_cli::AdminArgs),
    /// Print the settings the server would run with (file, environment
    /// and flags applied; secrets hidden) and exit: 0 if they are valid,
    /// 2 with the invalid setting named otherwise.
    Config {
        /// Print instead every setting with its meaning and default: the
        /// text of chat-server.example.toml.
        #[arg(long)]
        example: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Admin(admin)) => admin_cli::run(admin).await,
        Some(Command::Config { example: true }) => {
            print!("{}", Settings::example());
            ExitCode::SUCCESS
        }
        Some(Command::Config { example: false }) => match checked(cli.serve) {
            Ok((settings, _)) => {
                print!("{}", settings.to_toml_redacted());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("Error: {e}");
                ExitCode::from(2)
            }
        },
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

/// The settings from the defaults, the file, the environment and the
/// flags, and the configuration they make: any invalid value stops here.
fn checked(overrides: Overrides) -> anyhow::Result<(Settings, chat_server::Config)> {
    let settings = Settings::load(overrides).map_err(anyhow::Error::msg)?;
    let config = settings.clone().into_config()?;
    Ok((settings, config))
}

async fn serve(overrides: Overrides) -> anyhow::Result<()> {
    let (settings, config) = checked(overrides)?;
    // `into_config` has checked the filter, naming the setting.
    let filter = tracing_subscriber::EnvFilter::try_new(&settings.log)?;
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match settings.log_format {
        // Colours only on a terminal, never in log files or pipes.
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .init(),
        // One object per line, with the fields of every span it is in
        // (`spans`: request, gRPC call, session), for log pipelines.
        LogFormat::Json => logs.json().with_current_span(false).init(),
    }
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

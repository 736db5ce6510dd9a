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
    /// Certificates for serving over TLS.
    #[command(subcommand)]
    Tls(TlsCommand),
}

#[derive(Subcommand, Debug)]
enum TlsCommand {
    /// Write a self-signed certificate (`cert.pem`) and its key
    /// (`key.pem`), valid for a year, for trying TLS out; a team wants a
    /// certificate from a real CA.
    SelfSigned {
        /// A name or IP address clients reach the server by (repeat for
        /// more).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// Where to write the files.
        #[arg(long, default_value = ".")]
        out: std::path::PathBuf,
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
        Some(Command::Tls(TlsCommand::SelfSigned { hosts, out })) => {
            match self_signed(&hosts, &out) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("Error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
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

/// Writes `cert.pem` and `key.pem` (private) in `out` and says how to
/// use and trust them.
fn self_signed(hosts: &[String], out: &std::path::Path) -> anyhow::Result<()> {
    let (cert, key) = chat_server::tls::self_signed(hosts)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let (cert_path, key_path) = (out.join("cert.pem"), out.join("key.pem"));
    std::fs::write(&cert_path, cert).with_context(|| format!("writing {}", cert_path.display()))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    std::io::Write::write_all(
        &mut options
            .open(&key_path)
            .with_context(|| format!("writing {}", key_path.display()))?,
        key.as_bytes(),
    )
    .with_context(|| format!("writing {}", key_path.display()))?;
    let (cert, key) = (cert_path.display(), key_path.display());
    let host = &hosts[0];
    println!(
        "Wrote {cert} (valid for a year, for {names}) and its key {key}.\n\
         \n\
         Serve with it:\n  chat-server --tls-cert {cert} --tls-key {key} --grpc-addr 0.0.0.0:50050 --http-addr 0.0.0.0:3000\n\
         \n\
         Clients do not trust it until told to. Either per command:\n  \
         chat-server admin --http https://{host}:3000 --ca-cert {cert} nodes\n  \
         curl --cacert {cert} https://{host}:3000/healthz\n\
         or for the whole machine (Debian, Ubuntu):\n  \
         sudo cp {cert} /usr/local/share/ca-certificates/chat-server.crt && sudo update-ca-certificates",
        names = hosts.join(", "),
    );
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

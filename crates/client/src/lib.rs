//! `chat-client`, the command-line client of the chat-apps server, as a
//! library: `main.rs` only calls [`main`].
//!
//! # Usage
//!
//! ```text
//! chat-client [--server URL[,URL...]] [--user NAME] [--home DIR] [COMMAND]
//! ```
//!
//! Without a command it runs the interactive mode ([`interactive`]): full
//! screen on a terminal, line by line otherwise (`--ui`, env `CHAT_UI`:
//! `auto`, `line` or `screen`). The
//! commands are for scripts ([`oneshot`]); stdout carries their results
//! only, one per line, and errors go to stderr as `error: <message>`:
//!
//! | command | prints |
//! |---|---|
//! | `register <username> [--name N] [--phone P]` | `<username>` |
//! | `login <username>` (secret on stdin) | `<username>` |
//! | `send <to> [body...]` (body from stdin if none) | `<conversation_id> <seq>` |
//! | `history <peer> [--limit N] [--before SEQ]` | `<seq>\t<sent_at>\t<sender>\t<body>` per message, oldest first |
//! | `unread [--all]` | `<peer>\t<unread_count>\t<last_seq>` per conversation; a group: `#<group_id>\t<unread_count>\t<last_seq>\t<name>` |
//! | `group create <name> [members...]` | `<group_id>` |
//! | `group add <group> <users...>`, `group remove <group> <user>`, `group leave <group>` | nothing |
//! | `group info <group>` | `<group_id>\t<name>`, then `<username>\t<role>` per member (owner, admin, member) |
//! | `group list` | `<group_id>\t<name>\t<unread_count>` per group, sorted by name |
//!
//! `send` and `history` take a user or a group written `#<group_id>`; the
//! group commands take the id with or without the `#`. A `history` record
//! has a fifth field for anything but a plain text: `edited` or `deleted`
//! for a text changed since; the kind and a sixth field, the seq changed,
//! for an edit or a deletion (`message_edited`, `message_deleted`); and
//! for a membership event its kind:
//! `<seq>\t<sent_at>\t<actor>\t<members>\t<kind>` (members separated by
//! spaces; kind `group_created`, `members_added`, `member_removed` or
//! `member_left`); see [`view::history_record`]. Text fields (bodies, group names) escape backslash, tab,
//! newline and carriage return as `\\`, `\t`, `\n`, `\r`.
//!
//! `--server` (env `CHAT_SERVER`, default `http://127.0.0.1:50050`) takes a
//! URL, `host:port` or `:port`, or a comma-separated list of them. `--user`
//! (env `CHAT_USER`) picks a saved user for this run; the default is the
//! user last registered or logged in (only `register` and `login` change it).
//! `--home` (env `CHAT_CLIENT_HOME`, default `$XDG_CONFIG_HOME/chat-apps` or
//! `$HOME/.config/chat-apps`) holds `credentials.json`.
//!
//! # Exit codes
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the server is unreachable or unavailable, or another failure |
//! | 2 | usage error or invalid argument |
//! | 3 | no saved credentials, or the server rejected them (UNAUTHENTICATED) |
//! | 4 | not found (an unknown user, a group that does not exist or that you are not in) |
//! | 5 | already exists (a taken username) |
//! | 6 | not allowed (PERMISSION_DENIED: e.g. adding to a group without being its owner or an admin) |
//! | 7 | a limit was reached (RESOURCE_EXHAUSTED: e.g. a full group, too many groups) |
//!
//! # Layout
//!
//! - [`cli`]: the command line (clap) and client-side username rules.
//! - [`error`]: [`Failure`] and the exit codes ([`Exit`]).
//! - [`credentials`]: the saved secrets in `credentials.json`.
//! - [`connection`]: server addresses, channels, auth, backoff.
//! - [`api`]: the RPCs with timeouts and paging.
//! - [`account`]: registering and logging in, shared by both modes.
//! - [`oneshot`]: the one-shot subcommands.
//! - [`interactive`]: the interactive mode (its layout is in its docs);
//!   [`input`] reads its lines, or the keys of its full screen.
//! - [`delivery`]: dedupe, gaps and `delivered` cursors (no I/O).
//! - [`view`]: stdout/stderr, and the records the subcommands print.

pub mod account;
pub mod api;
pub mod cli;
pub mod connection;
pub mod credentials;
pub mod delivery;
pub mod error;
pub mod input;
pub mod interactive;
pub mod oneshot;
pub mod view;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

pub use cli::{Cli, Command};
pub use error::{Exit, Failure};

use credentials::CredentialStore;

/// What every command needs: the servers, the home directory, the user.
#[derive(Debug, Clone)]
pub struct Context {
    /// Server URLs, normalized, in the order given.
    pub servers: Vec<String>,
    pub home: PathBuf,
    /// `--user`, if given.
    pub user: Option<String>,
    /// `--ui`: how the interactive mode shows itself.
    pub ui: cli::Ui,
}

impl Context {
    pub fn from_cli(cli: &Cli) -> Result<Self, Failure> {
        let servers = connection::parse_servers(&cli.server)?;
        let home = match &cli.home {
            Some(home) => home.clone(),
            None => credentials::default_home().ok_or_else(|| {
                Failure::usage("no home directory: set --home, CHAT_CLIENT_HOME or HOME")
            })?,
        };
        Ok(Self {
            servers,
            home,
            user: cli.user.clone(),
            ui: cli.ui,
        })
    }

    pub fn credentials(&self) -> CredentialStore {
        CredentialStore::new(&self.home)
    }
}

/// Runs one parsed command line.
pub async fn run(cli: Cli) -> Result<(), Failure> {
    let ctx = Context::from_cli(&cli)?;
    match cli.command {
        None => interactive::run(&ctx).await,
        Some(Command::Register {
            username,
            name,
            phone,
        }) => {
            let (name, phone) = (name.unwrap_or_default(), phone.unwrap_or_default());
            oneshot::register(&ctx, &username, &name, &phone).await
        }
        Some(Command::Login { username }) => oneshot::login(&ctx, &username).await,
        Some(Command::Send { to, body }) => oneshot::send(&ctx, &to, &body).await,
        Some(Command::History {
            peer,
            limit,
            before,
        }) => oneshot::history(&ctx, &peer, limit, before).await,
        Some(Command::Edit { peer, seq, body }) => {
            oneshot::edit(&ctx, &peer, seq, Some(&body.join(" "))).await
        }
        Some(Command::Delete { peer, seq }) => oneshot::edit(&ctx, &peer, seq, None).await,
        Some(Command::Unread { all }) => oneshot::unread(&ctx, all).await,
        Some(Command::Group(group)) => oneshot::group(&ctx, &group).await,
    }
}

/// The whole program: parses the arguments, runs, reports the failure.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(Exit::Usage.code()));
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            view::err(format!("error: cannot start: {e}"));
            return ExitCode::from(Exit::Failure.code());
        }
    };
    let result = runtime.block_on(run(cli));
    // Nothing left to wait for; do not let a stray task hold the exit up.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            view::err(format!("error: {failure}"));
            ExitCode::from(failure.exit.code())
        }
    }
}

//! The command line: global options, subcommands and their help text
//! (clap), and what a valid username looks like on the client side.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::error::Failure;

/// The server used when neither `--server` nor `CHAT_SERVER` is set.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50050";

const ABOUT: &str = "Command-line client of the chat-apps server.";

const LONG_ABOUT: &str = "\
Command-line client of the chat-apps server.

Without a subcommand, chat-client starts the interactive mode: it logs in
with the saved credentials (or asks for a username and registers it), shows
your messages as they arrive and sends what you type. Type /help there for
its commands:

  /to <user>     choose who to talk to: the lines you type are sent to them
  /history [n]   the last n messages with them (default 20)
  /unread        the conversations with unread messages
  /help, /quit   (ctrl-d and ctrl-c quit too)

The subcommands are for scripts: stdout carries results only, one item per
line in a stable format; errors go to stderr as `error: <message>`.";

const EXIT_CODES_SHORT: &str = "\
Exit codes: 0 ok, 1 server unreachable or other failure, 2 usage, 3 no or \
rejected credentials, 4 not found, 5 already exists. See --help.";

const EXIT_CODES_LONG: &str = "\
Output formats (one item per line, fields separated by a tab where noted):
  register, login   <username>
  send              <conversation_id> <seq>          (space separated)
  history           <seq>\\t<sent_at>\\t<sender>\\t<body>
                    sent_at is RFC 3339 in UTC with milliseconds; in the body
                    a backslash, tab, newline and carriage return are written
                    as \\\\, \\t, \\n and \\r
  unread            <peer>\\t<unread_count>\\t<last_seq>
                    a group conversation shows as #<group_id>

Credentials are saved in <home>/credentials.json (mode 0600): the secret of
each user, and the last used user, who is the default.

Exit codes:
  0  success
  1  the server is unreachable or unavailable, or another failure
  2  usage error or invalid argument (e.g. a malformed username)
  3  no saved credentials, or the server rejected them (UNAUTHENTICATED)
  4  not found (e.g. an unknown user)
  5  already exists (e.g. the username is taken)";

/// `chat-client [OPTIONS] [COMMAND]`.
#[derive(Debug, Parser)]
#[command(
    name = "chat-client",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = EXIT_CODES_SHORT,
    after_long_help = EXIT_CODES_LONG
)]
pub struct Cli {
    /// The server's gRPC address, or a comma-separated list of them.
    ///
    /// A URL (http://host:port), host:port, or :port (on 127.0.0.1). With a
    /// list, the interactive client moves to the next server each time it
    /// reconnects, and the subcommands use the first one that answers.
    #[arg(
        long,
        global = true,
        env = "CHAT_SERVER",
        default_value = DEFAULT_SERVER,
        value_name = "URL[,URL...]"
    )]
    pub server: String,

    /// The saved user to act as (default: the last used one).
    #[arg(long, global = true, env = "CHAT_USER", value_name = "NAME", value_parser = username_arg)]
    pub user: Option<String>,

    /// Where credentials are saved [default: $XDG_CONFIG_HOME/chat-apps or
    /// $HOME/.config/chat-apps].
    #[arg(long, global = true, env = "CHAT_CLIENT_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Register a new user and save its secret.
    ///
    /// Prints the username. The new user becomes the default one.
    Register {
        /// 3 to 32 characters of a-z 0-9 _ . - (case-insensitive).
        #[arg(value_parser = username_arg)]
        username: String,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        /// Phone number.
        #[arg(long)]
        phone: Option<String>,
    },
    /// Save the secret of an existing user, read from stdin.
    ///
    /// For a user registered elsewhere (e.g. with curl on the HTTP API). The
    /// server must accept the secret as the one of USERNAME. Prints the
    /// username, who becomes the default user.
    Login {
        /// The user whose secret is on stdin.
        #[arg(value_parser = username_arg)]
        username: String,
    },
    /// Send a direct message.
    ///
    /// The body is the remaining arguments joined by spaces, or stdin when
    /// there are none (put `--` before a body that starts with `-`). Prints
    /// `<conversation_id> <seq>`.
    Send {
        /// The recipient's username.
        #[arg(value_parser = username_arg)]
        to: String,
        /// The message text.
        body: Vec<String>,
    },
    /// Print the messages exchanged with a user.
    ///
    /// One line per message, oldest first: `<seq>\t<sent_at>\t<sender>\t<body>`.
    /// Prints nothing when there is no conversation with PEER yet.
    History {
        /// The other user of the direct conversation.
        #[arg(value_parser = username_arg)]
        peer: String,
        /// The newest N messages (0: all of them).
        #[arg(long, default_value_t = 50, value_name = "N")]
        limit: u32,
        /// Only messages with a seq below SEQ.
        #[arg(long, value_name = "SEQ")]
        before: Option<u64>,
    },
    /// Print the conversations with unread messages.
    ///
    /// One line per conversation, sorted by peer:
    /// `<peer>\t<unread_count>\t<last_seq>`.
    Unread {
        /// List every conversation, read or not.
        #[arg(long)]
        all: bool,
    },
}

fn username_arg(raw: &str) -> Result<String, String> {
    parse_username(raw).map_err(|f| f.message)
}

/// A username as the server sees it: 3 to 32 characters of `a-z 0-9 _ . -`,
/// lowercased. A leading `@` is dropped, so `@Bob` is `bob`.
pub fn parse_username(raw: &str) -> Result<String, Failure> {
    let name = raw.trim();
    let name = name.strip_prefix('@').unwrap_or(name).to_ascii_lowercase();
    let len = name.chars().count();
    if !(3..=32).contains(&len) {
        return Err(Failure::usage(format!(
            "invalid username {raw:?}: it must be 3 to 32 characters long"
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-')))
    {
        return Err(Failure::usage(format!(
            "invalid username {raw:?}: only a-z, 0-9, '_', '.' and '-' are allowed (found {bad:?})"
        )));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn usernames_are_lowercased_and_checked() {
        assert_eq!(parse_username("User_1.x-y").unwrap(), "user_1.x-y");
        assert_eq!(parse_username("@Bob").unwrap(), "bob");
        for bad in ["ab", "", "a b c", "a/b/c", "ünï", &"a".repeat(33)] {
            assert!(parse_username(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn global_options_may_follow_the_subcommand() {
        let cli =
            Cli::try_parse_from(["chat-client", "unread", "--user", "Alice", "--server", ":1"])
                .unwrap();
        assert_eq!(cli.user.as_deref(), Some("alice"));
        assert_eq!(cli.server, ":1");
        assert!(matches!(cli.command, Some(Command::Unread { all: false })));
    }
}

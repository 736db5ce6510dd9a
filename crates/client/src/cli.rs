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
your messages as they arrive and sends what you type; full screen on a
terminal (Tab and Ctrl+G move between conversations, PageUp scrolls back, Up
on an empty line selects a message to edit or delete), line by line
otherwise (--ui). Type /help there for its commands:

  /to <user>         choose who to talk to: the lines you type go to them
  /to #<group>       talk in a group (its id, or its name)
  /history [n]       the last n messages there (default 20)
  /unread            the conversations with unread messages
  /edit <seq> <text>, /delete <seq>
                     change one of your messages there
  /group create <name> [members...]   create a group and talk in it
  /group add <users...>, /group remove <user>, /group leave, /group info
                     manage the current group (adding and removing is for
                     its owner and admins)
  /group list        your groups
  /help, /quit       (ctrl-d and ctrl-c quit too)

The subcommands are for scripts: stdout carries results only, one item per
line in a stable format; errors go to stderr as `error: <message>`.";

const EXIT_CODES_SHORT: &str = "\
Exit codes: 0 ok, 1 server unreachable or other failure, 2 usage, 3 no or \
rejected credentials, 4 not found, 5 already exists, 6 not allowed, 7 limit \
reached. See --help.";

const EXIT_CODES_LONG: &str = "\
Output formats (one item per line, fields separated by a tab where noted):
  register, login   <username>
  send              <conversation_id> <seq>          (space separated)
  history           <seq>\\t<sent_at>\\t<sender>\\t<body>
                    sent_at is RFC 3339 in UTC with milliseconds; in a text
                    field (a body, a group name) a backslash, tab, newline
                    and carriage return are written as \\\\, \\t, \\n and \\r.
                    Anything but a plain text has a fifth field: edited or
                    deleted (empty body) for a text changed since;
                    message_edited or message_deleted, then a sixth field,
                    the seq changed, for an edit or a deletion; and for a
                    membership event of a group its kind:
                    <seq>\\t<sent_at>\\t<actor>\\t<members>\\t<kind>
                    with the usernames it concerns separated by spaces and
                    kind one of group_created, members_added, member_removed,
                    member_left
  unread            <peer>\\t<unread_count>\\t<last_seq>
                    a group shows as #<group_id>, with its name appended:
                    #<group_id>\\t<unread_count>\\t<last_seq>\\t<name>
  group create      <group_id>
  group info        <group_id>\\t<name>, then <username>\\t<role> per member
                    (role: owner, admin or member)
  group list        <group_id>\\t<name>\\t<unread_count>
  group add, group remove, group leave    nothing
  edit, delete      nothing (edit <peer|#group> <seq> <text...>,
                    delete <peer|#group> <seq>: your own text messages only)

A group is written #<group_id> where a user could be (send, history); the
group commands take the id with or without the #. Quote it in a shell: '#' at
the start of a word begins a comment.

Credentials are saved in <home>/credentials.json (mode 0600): the secret of
each user, and the user last registered or logged in, who is the default.

Exit codes:
  0  success
  1  the server is unreachable or unavailable, or another failure
  2  usage error or invalid argument (e.g. a malformed username)
  3  no saved credentials, or the server rejected them (UNAUTHENTICATED)
  4  not found (e.g. an unknown user, or a group you are not in)
  5  already exists (e.g. the username is taken)
  6  not allowed (PERMISSION_DENIED: e.g. adding to a group as a plain member)
  7  a limit was reached (RESOURCE_EXHAUSTED: e.g. a full group)";

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

    /// The saved user to act as, for this run only (default: the user last
    /// registered or logged in; only `register` and `login` change it).
    #[arg(long, global = true, env = "CHAT_USER", value_name = "NAME", value_parser = username_arg)]
    pub user: Option<String>,

    /// Where credentials are saved [default: $XDG_CONFIG_HOME/chat-apps or
    /// $HOME/.config/chat-apps].
    #[arg(long, global = true, env = "CHAT_CLIENT_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,

    /// How the interactive mode shows itself: `screen` (full screen),
    /// `line` (line by line, as for scripts and pipes), or `auto` (full
    /// screen when stdin and stdout are a terminal).
    #[arg(long, global = true, env = "CHAT_UI", value_enum, default_value_t = Ui::Auto)]
    pub ui: Ui,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// How the interactive mode shows itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Ui {
    Auto,
    Line,
    Screen,
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
    /// Send a message to a user or a group.
    ///
    /// The body is the remaining arguments joined by spaces, or stdin when
    /// there are none (put `--` before a body that starts with `-`). Prints
    /// `<conversation_id> <seq>`.
    Send {
        /// The recipient's username, or #<group_id> for a group.
        #[arg(value_parser = target_arg, value_name = "TO")]
        to: Target,
        /// The message text.
        body: Vec<String>,
    },
    /// Print the messages exchanged with a user, or of a group.
    ///
    /// One line per message, oldest first: `<seq>\t<sent_at>\t<sender>\t<body>`.
    /// Prints nothing when there is no conversation with PEER yet (exit 4
    /// when there is no such user). Anything but a plain text has a fifth
    /// field (edited, deleted, an edit or a deletion with the seq changed,
    /// a membership event's kind): see the formats in --help.
    History {
        /// The other user of the direct conversation, or #<group_id>.
        #[arg(value_parser = target_arg, value_name = "PEER")]
        peer: Target,
        /// The newest N messages (0: all of them).
        #[arg(long, default_value_t = 50, value_name = "N")]
        limit: u32,
        /// Only messages with a seq below SEQ.
        #[arg(long, value_name = "SEQ")]
        before: Option<u64>,
    },
    /// Edit one of your text messages (prints nothing).
    ///
    /// Exits with 4 if there is no such message of yours there.
    Edit {
        #[arg(value_parser = target_arg, value_name = "PEER")]
        peer: Target,
        seq: u64,
        #[arg(required = true)]
        body: Vec<String>,
    },
    /// Delete one of your text messages (prints nothing).
    ///
    /// Exits with 4 if there is no such message of yours there.
    Delete {
        #[arg(value_parser = target_arg, value_name = "PEER")]
        peer: Target,
        seq: u64,
    },
    /// Print the conversations with unread messages.
    ///
    /// One line per conversation, sorted by peer:
    /// `<peer>\t<unread_count>\t<last_seq>`. A group shows as
    /// `#<group_id>\t<unread_count>\t<last_seq>\t<name>`.
    Unread {
        /// List every conversation, read or not.
        #[arg(long)]
        all: bool,
    },
    /// Create and manage groups.
    #[command(subcommand)]
    Group(GroupCommand),
}

/// `chat-client group ...`. A GROUP is its id, with or without a leading #.
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Create a group, with you as its owner.
    ///
    /// Prints `<group_id>`.
    Create {
        /// The group's name: 1 to 64 characters.
        name: String,
        /// Users to add besides you.
        #[arg(value_parser = username_arg)]
        members: Vec<String>,
    },
    /// Add users to a group (owner and admins only).
    ///
    /// Prints nothing; users already in the group are left as they are.
    Add {
        /// The group's id, with or without a leading #.
        #[arg(value_parser = group_id_arg)]
        group: String,
        /// The users to add.
        #[arg(value_parser = username_arg, required = true)]
        users: Vec<String>,
    },
    /// Remove a member from a group (owner and admins only).
    ///
    /// Prints nothing. The owner cannot be removed.
    Remove {
        /// The group's id, with or without a leading #.
        #[arg(value_parser = group_id_arg)]
        group: String,
        /// The member to remove.
        // Not `user`: that id is the global `--user`.
        #[arg(value_parser = username_arg, value_name = "USER")]
        member: String,
    },
    /// Leave a group.
    ///
    /// Prints nothing. When the owner leaves, the longest-standing member
    /// becomes owner.
    Leave {
        /// The group's id, with or without a leading #.
        #[arg(value_parser = group_id_arg)]
        group: String,
    },
    /// Print a group and its members.
    ///
    /// `<group_id>\t<name>`, then one line per member: `<username>\t<role>`,
    /// with role owner, admin or member.
    Info {
        /// The group's id, with or without a leading #.
        #[arg(value_parser = group_id_arg)]
        group: String,
    },
    /// Print your groups.
    ///
    /// One line per group, sorted by name: `<group_id>\t<name>\t<unread_count>`.
    List,
}

/// Who a message goes to, or whose history to print: a user, or a group
/// (written `#<group_id>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    User(String),
    Group(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::User(name) => f.write_str(name),
            Target::Group(id) => write!(f, "#{id}"),
        }
    }
}

fn target_arg(raw: &str) -> Result<Target, String> {
    parse_target(raw).map_err(|f| f.message)
}

fn group_id_arg(raw: &str) -> Result<String, String> {
    parse_group_id(raw).map_err(|f| f.message)
}

/// `#<group_id>` is a group; anything else a username.
pub fn parse_target(raw: &str) -> Result<Target, Failure> {
    if raw.trim_start().starts_with('#') {
        parse_group_id(raw).map(Target::Group)
    } else {
        parse_username(raw).map(Target::User)
    }
}

/// A group id, with or without a leading `#`: 1 to 64 characters of
/// `A-Z a-z 0-9 _ -` (the server's are `g` and 32 hex digits).
pub fn parse_group_id(raw: &str) -> Result<String, Failure> {
    let trimmed = raw.trim();
    let id = trimmed.strip_prefix('#').unwrap_or(trimmed);
    let valid = (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
    if !valid {
        return Err(Failure::usage(format!(
            "invalid group id {raw:?}: a group is written #<group_id>, e.g. #g0123abcd…"
        )));
    }
    Ok(id.to_owned())
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

    #[test]
    fn a_target_is_a_user_or_a_group() {
        assert_eq!(parse_target("@Bob").unwrap(), Target::User("bob".into()));
        assert_eq!(
            parse_target("#g12ab").unwrap(),
            Target::Group("g12ab".into())
        );
        assert_eq!(Target::Group("g1".into()).to_string(), "#g1");
        for bad in ["#", "# g1", "#a/b", "#x y"] {
            assert!(parse_target(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_group_id("g1").unwrap(), "g1");
        assert_eq!(parse_group_id("#g1").unwrap(), "g1");
        let cli = Cli::try_parse_from(["chat-client", "send", "#g1", "hi"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Send { to: Target::Group(ref id), .. }) if id == "g1"
        ));
        let cli = Cli::try_parse_from(["chat-client", "group", "add", "#g1", "Dave"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Group(GroupCommand::Add { ref group, ref users }))
                if group == "g1" && users == &["dave"]
        ));
        assert!(Cli::try_parse_from(["chat-client", "group", "add", "g1"]).is_err());
        let cli = Cli::try_parse_from([
            "chat-client",
            "--user",
            "alice",
            "group",
            "remove",
            "g1",
            "carol",
        ])
        .unwrap();
        assert_eq!(cli.user.as_deref(), Some("alice"));
        assert!(matches!(
            cli.command,
            Some(Command::Group(GroupCommand::Remove { ref member, .. })) if member == "carol"
        ));
    }
}

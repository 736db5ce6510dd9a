//! How the interactive mode looks: [`Render`], the one interface between
//! what happened ([`Output`]) and the terminal, and [`LineRenderer`], the
//! line-by-line implementation that prints to stdout and stderr.
//!
//! Every text a person reads in interactive mode is worded here
//! ([`describe`]), and nothing else in [`crate::interactive`] prints but
//! the full screen ([`super::screen`]), which draws what it shows itself
//! and uses these words for the rest: the mode says what happened, with
//! the data a screen needs, and never how it looks. This module owns no
//! state of the conversation and makes no call to a server.

use std::path::Path;
use std::time::Duration;

use chat_proto as pb;
use chrono::{DateTime, Local, TimeZone};

use super::Chosen;
use crate::error::Failure;
use crate::view::{self, is_event};

/// Shows what happens in the interactive mode.
pub trait Render {
    /// Shows one thing that happened, or asks for the next line of input
    /// ([`Output::AskUsername`], [`Output::AskSecret`]).
    fn show(&mut self, output: Output<'_>);

    /// Takes the terminal over once logged in; `true` when it then reads
    /// the keys itself ([`Render::key`]) instead of lines.
    fn begin(&mut self) -> bool {
        false
    }

    /// A key, a resize or a mouse event (`None`: a second passed), and
    /// what the user asks for with it.
    fn key(&mut self, _event: Option<crossterm::event::Event>) -> Vec<Intent> {
        Vec::new()
    }

    /// Whether it keeps a scrollback per conversation, to be filled with
    /// the newest page of a conversation when it is chosen.
    fn scrollback(&self) -> bool {
        false
    }
}

/// What a user asks for on a screen that reads keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    /// A line, as if typed in line mode (text or a `/` command).
    Line(String),
    /// Open a conversation (by id): plain lines go there, and its newest
    /// page is shown.
    Open(String),
    /// The page of a conversation before `before`.
    Older { conversation: String, before: u64 },
    /// The user types in the open conversation.
    Typing,
}

/// Everything the interactive mode tells its user.
#[derive(Debug)]
pub enum Output<'a> {
    // Logging in.
    /// No saved credentials: a username is about to be asked for.
    SignUp,
    AskUsername,
    AskSecret,
    /// The input ended while a username or a secret was asked for.
    InputEnded,
    /// What was typed is refused, and why (a bad username, a secret the
    /// server does not accept); the user may try again.
    Refused(&'a str),
    Registered {
        user: &'a str,
        saved_in: &'a Path,
    },
    Taken {
        user: &'a str,
    },
    LoggedIn {
        user: &'a str,
        saved_in: &'a Path,
    },

    // The connection.
    CannotConnect {
        server: &'a str,
        why: &'a str,
        retry_in: Duration,
    },
    Disconnected {
        reason: &'a str,
    },
    /// A stream is open; `via` names the server when there are several,
    /// `first` says whether it is the first stream of this run.
    Connected {
        ready: &'a pb::Ready,
        via: Option<&'a str>,
        first: bool,
    },
    /// `/quit` waits for the acks of `unsent` messages.
    Quitting {
        unsent: usize,
    },
    /// A message still unacknowledged when quitting gave up.
    NotSent {
        label: &'a str,
        body: &'a str,
    },
    /// The server refused a send.
    SendRefused {
        label: &'a str,
        body: &'a str,
        why: SendRefusal<'a>,
    },
    /// Missed messages could not be fetched.
    GapNotFetched {
        why: &'a str,
    },

    // What the server pushes.
    /// A message or an event of a conversation shown as `label`.
    Message {
        message: &'a pb::Message,
        me: &'a str,
        label: &'a str,
    },
    /// A message of ours just acknowledged (the line mode shows nothing:
    /// the terminal shows what was typed).
    Sent {
        message: &'a pb::Message,
        label: &'a str,
    },
    /// A page of a conversation's history, oldest first: the newest page
    /// (`before` = 0) or the one before `before`.
    Page {
        conversation: &'a str,
        label: &'a str,
        messages: &'a [pb::Message],
        before: u64,
    },
    /// The conversation where plain lines go now has this id.
    Opened {
        conversation: &'a str,
    },
    /// An error frame of the stream.
    ServerError(&'a str),
    Presence {
        user: &'a str,
        online: bool,
    },
    /// A read receipt in the chosen conversation.
    ReadUpTo {
        user: &'a str,
        seq: u64,
    },
    /// Someone types in the chosen conversation.
    Typing {
        user: &'a str,
    },
    /// The server no longer lists a group we were in.
    NoLongerIn {
        label: &'a str,
    },

    // Commands.
    Help,
    Usage(Usage),
    UnknownCommand(&'a str),
    /// Where plain lines go now.
    Talking(&'a Chosen),
    ChooseFirst,
    ChooseGroupFirst,
    /// A command that needs the server while disconnected.
    NotConnected,
    /// A line typed while disconnected: it waits for the next stream.
    QueuedOffline,
    ItIsYou,
    NoSuchUser(&'a str),
    UserNotChecked {
        user: &'a str,
        why: &'a str,
    },
    GroupsNotListed {
        why: &'a str,
    },
    NotMarkedRead {
        why: &'a str,
    },
    /// `/to #<query>` names no group.
    NoGroupNamed(&'a str),
    /// `/to #<query>` names several groups, as (id, name).
    SeveralGroups {
        query: &'a str,
        groups: &'a [(String, String)],
    },
    NoMessagesYet(&'a Chosen),
    History {
        chosen: &'a Chosen,
        messages: &'a [pb::Message],
        me: &'a str,
    },
    NotYourMessage {
        seq: u64,
    },
    /// The conversations with unread messages (none: said as such).
    Unread(&'a [pb::Conversation]),
    AlreadyIn {
        label: &'a str,
        users: &'a [String],
    },
    NotInAnyMore {
        label: &'a str,
    },
    GroupInfo(&'a pb::Group),
    /// The groups we are in, in the order given (none: said as such).
    Groups(&'a [pb::Conversation]),
    /// A command failed.
    Failed(&'a Failure),
    /// A call failed; the server's description.
    Error(&'a str),
}

/// Why the server refused a send.
#[derive(Debug, Clone, Copy)]
pub enum SendRefusal<'a> {
    NoSuchUser,
    NoSuchGroup,
    /// The server's own words.
    Said(&'a str),
    Unexplained,
}

/// A command typed wrong: its usage is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    To,
    ToGroup,
    History,
    Edit,
    Delete,
    Group,
    GroupCreate,
    GroupAdd,
    GroupRemove,
}

const HELP: &str = "\
commands:
  /to <user>       choose who to talk to: the lines you type are sent to them
  /to #<group>     talk in a group, named by its id or its name
  /history [n]     the last n messages there (default 20)
  /unread          the conversations with unread messages
  /edit <seq> <text>   edit one of your messages there (its seq is the
                   number in front of it in /history)
  /delete <seq>    delete one of your messages there
  /group create <name> [members...]
                   create a group (quote a name with spaces) and talk in it
  /group add <users...>   add to the current group (owner and admins)
  /group remove <user>    remove from the current group (owner and admins)
  /group leave     leave the current group
  /group info      the current group's id and members
  /group list      your groups
  /help            this help
  /quit            leave (ctrl-d and ctrl-c too)
a line starting with // is sent with one slash less
on the full screen: Tab and Ctrl+G move between conversations, PageUp
scrolls back, Up on an empty line selects a message (e edit, d delete,
r reply), Alt+Enter starts a new line, Ctrl+P recalls a line";

impl Usage {
    fn text(self) -> &'static str {
        match self {
            Usage::To => "usage: /to <user> or /to #<group>",
            Usage::ToGroup => "usage: /to #<group>, with the group's id or name",
            Usage::History => "usage: /history [n], with n a positive number",
            Usage::Edit => "usage: /edit <seq> <new text>",
            Usage::Delete => "usage: /delete <seq>",
            Usage::Group => {
                "usage: /group create <name> [members...] | /group add <users...> | \
                 /group remove <user> | /group leave | /group info | /group list"
            }
            Usage::GroupCreate => {
                "usage: /group create <name> [members...] (quote a name with spaces)"
            }
            Usage::GroupAdd => "usage: /group add <users...>",
            Usage::GroupRemove => "usage: /group remove <user>",
        }
    }
}

/// The line interface: one line per thing on stdout, errors and warnings
/// on stderr, prompts without a newline.
///
/// An outage is said once: the first failed attempt (or the lost stream)
/// prints a line, the attempts after it print nothing until a stream is
/// open again, which says so. A screen has a status line for the countdown;
/// a scroll of lines does not.
#[derive(Debug, Default)]
pub struct LineRenderer {
    /// The current outage was already said.
    outage_said: bool,
}

impl LineRenderer {
    /// Whether `output` only repeats an outage already said (and notes the
    /// start or the end of one).
    fn repeats_outage(&mut self, output: &Output<'_>) -> bool {
        match output {
            Output::CannotConnect { .. } | Output::Disconnected { .. } => {
                std::mem::replace(&mut self.outage_said, true)
            }
            Output::Connected { .. } => {
                self.outage_said = false;
                false
            }
            _ => false,
        }
    }
}

impl Render for LineRenderer {
    fn show(&mut self, output: Output<'_>) {
        if self.repeats_outage(&output) {
            return;
        }
        for said in describe(&output) {
            match said {
                Said::Out(line) => view::out(line),
                Said::Err(line) => view::err(line),
                Said::Prompt(text) => view::prompt(&text),
            }
        }
    }
}

/// One piece of text for people, and where a line interface puts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Said {
    /// A line of what happened (stdout).
    Out(String),
    /// A line of an error or a warning (stderr).
    Err(String),
    /// A question, without a newline.
    Prompt(String),
}

/// The text of `output`, line by line: what the line interface prints
/// and what a full screen shows of what it does not draw itself.
pub fn describe(output: &Output<'_>) -> Vec<Said> {
    let mut said = Vec::new();
    {
        use Output as O;
        match *output {
            O::SignUp => out(
                &mut said,
                "no saved credentials: choose a username to register (3 to 32 of a-z 0-9 _ . -)",
            ),
            O::AskUsername => prompt(&mut said, "username: "),
            O::AskSecret => prompt(&mut said, "secret: "),
            O::InputEnded => out(&mut said, ""),
            O::Refused(why) => out(&mut said, why),
            O::Registered { user, saved_in } => out(
                &mut said,
                format!(
                    "registered {user}; its secret is saved in {}",
                    saved_in.display()
                ),
            ),
            O::Taken { user } => out(
                &mut said,
                format!(
                    "{user} is taken. If it is yours, paste its secret; \
                 press Enter to choose another name."
                ),
            ),
            O::LoggedIn { user, saved_in } => out(
                &mut said,
                format!(
                    "logged in as {user}; the secret is saved in {}",
                    saved_in.display()
                ),
            ),
            O::CannotConnect {
                server,
                why,
                retry_in,
            } => out(
                &mut said,
                format!(
                    "cannot connect to {server}: {why}; retrying in {:.1} s…",
                    retry_in.as_secs_f64()
                ),
            ),
            O::Disconnected { reason } => {
                out(&mut said, format!("disconnected: {reason}; reconnecting…"));
            }
            O::Connected { ready, via, first } => {
                out(&mut said, ready_summary(ready, via));
                if first {
                    out(
                        &mut said,
                        "type /to <user> (or /to #<group>) to choose who to talk to, \
                         /help for the commands",
                    );
                }
            }
            O::Quitting { unsent } => {
                out(
                    &mut said,
                    format!("sending {unsent} message(s) before quitting…"),
                );
            }
            O::NotSent { label, body } => {
                err(
                    &mut said,
                    format!("error: not sent to {label}: {}", preview(body)),
                );
            }
            O::SendRefused { label, body, why } => {
                let why = match why {
                    SendRefusal::NoSuchUser => "no such user",
                    SendRefusal::NoSuchGroup => "no such group (or you are not in it)",
                    SendRefusal::Said(text) => text,
                    SendRefusal::Unexplained => "no reason given",
                };
                err(
                    &mut said,
                    format!("error: not sent to {label} ({}): {why}", preview(body)),
                );
            }
            O::GapNotFetched { why } => {
                err(
                    &mut said,
                    format!("warning: cannot fetch missed messages: {why}"),
                );
            }
            O::Message { message, me, label } => {
                out(&mut said, message_line(message, me, label, Local::now()));
            }
            O::Sent { .. } | O::Opened { .. } => {}
            O::Page {
                messages, label, ..
            } => {
                let now = Local::now();
                let group = label.starts_with('#');
                for m in messages {
                    out(&mut said, history_line(m, "", label, group, now));
                }
            }
            O::ServerError(message) => err(&mut said, format!("error: {message}")),
            O::Presence { user, online } => {
                let state = if online { "online" } else { "offline" };
                out(&mut said, format!("* {} is {state}", terminal_text(user)));
            }
            O::ReadUpTo { user, seq } => {
                out(
                    &mut said,
                    format!("* {} read up to {seq}", terminal_text(user)),
                );
            }
            O::Typing { user } => out(&mut said, format!("* {} is typing…", terminal_text(user))),
            O::NoLongerIn { label } => out(&mut said, format!("you are no longer in {label}")),
            O::Help => out(&mut said, HELP),
            O::Usage(usage) => out(&mut said, usage.text()),
            O::UnknownCommand(name) => out(
                &mut said,
                format!("unknown command /{name}; /help lists the commands"),
            ),
            O::Talking(chosen) => out(
                &mut said,
                match chosen {
                    Chosen::User(user) => format!("talking to {user}"),
                    Chosen::Group { id, label } => format!("talking in {label} (group {id})"),
                },
            ),
            O::ChooseFirst => {
                out(
                    &mut said,
                    "choose who to talk to first: /to <user> or /to #<group>",
                );
            }
            O::ChooseGroupFirst => out(&mut said, "choose a group first: /to #<group>"),
            O::NotConnected => out(&mut said, "not connected: try again once reconnected"),
            O::QueuedOffline => {
                out(
                    &mut said,
                    "not connected: the message will be sent once reconnected",
                );
            }
            O::ItIsYou => out(&mut said, "that is you: choose someone else"),
            O::NoSuchUser(user) => out(&mut said, format!("no such user: {user}")),
            O::UserNotChecked { user, why } => {
                err(
                    &mut said,
                    format!("warning: cannot check that {user} exists: {why}"),
                );
            }
            O::GroupsNotListed { why } => {
                err(
                    &mut said,
                    format!("warning: cannot list your groups: {why}"),
                );
            }
            O::NotMarkedRead { why } => {
                err(&mut said, format!("warning: cannot mark as read: {why}"))
            }
            O::NoGroupNamed(query) => out(&mut said, format!("no such group: #{query}")),
            O::SeveralGroups { query, groups } => {
                out(
                    &mut said,
                    format!(
                        "{} groups are called {query}; choose one by id:",
                        groups.len()
                    ),
                );
                for (id, name) in groups {
                    out(
                        &mut said,
                        format!("  /to #{id}   ({})", terminal_text(name)),
                    );
                }
            }
            O::NoMessagesYet(chosen) => {
                out(&mut said, format!("no messages {} yet", place(chosen)))
            }
            O::History {
                chosen,
                messages,
                me,
            } => {
                let now = Local::now();
                out(
                    &mut said,
                    format!(
                        "--- the last {} message(s) {} ---",
                        messages.len(),
                        place(chosen)
                    ),
                );
                let group = matches!(chosen, Chosen::Group { .. });
                for m in messages {
                    out(&mut said, history_line(m, me, chosen.label(), group, now));
                }
            }
            O::NotYourMessage { seq } => err(
                &mut said,
                format!(
                "error: no message {seq} of yours here (only your own text messages can be changed)"
            ),
            ),
            O::Unread(conversations) => {
                if conversations.is_empty() {
                    out(&mut said, "no unread messages");
                    return said;
                }
                let mut unread: Vec<_> = conversations.iter().collect();
                unread.sort_by_key(|c| display_label(c));
                for c in unread {
                    out(
                        &mut said,
                        format!("{}: {} unread", display_label(c), c.unread_count),
                    );
                }
            }
            O::AlreadyIn { label, users } => {
                out(
                    &mut said,
                    format!("already in {label}: {}", users.join(", ")),
                );
            }
            O::NotInAnyMore { label } => {
                err(&mut said, format!("error: you are not in {label} any more"));
            }
            O::GroupInfo(group) => {
                let n = group.members.len();
                let s = if n == 1 { "" } else { "s" };
                out(
                    &mut said,
                    format!(
                        "{} (group {}), {n} member{s}:",
                        group_label(&group.group_id, &group.name),
                        group.group_id
                    ),
                );
                for member in &group.members {
                    out(
                        &mut said,
                        format!("  {} ({})", member.username, view::role_name(member.role)),
                    );
                }
            }
            O::Groups(groups) => {
                if groups.is_empty() {
                    out(
                        &mut said,
                        "you are in no group: /group create <name> [members...]",
                    );
                    return said;
                }
                for c in groups {
                    out(
                        &mut said,
                        format!(
                            "{} (group {}): {} unread",
                            display_label(c),
                            c.group_id,
                            c.unread_count
                        ),
                    );
                }
            }
            O::Failed(failure) => err(&mut said, format!("error: {failure}")),
            O::Error(why) => err(&mut said, format!("error: {why}")),
        }
    }
    said
}

fn out(said: &mut Vec<Said>, line: impl std::fmt::Display) {
    said.push(Said::Out(line.to_string()));
}

fn err(said: &mut Vec<Said>, line: impl std::fmt::Display) {
    said.push(Said::Err(line.to_string()));
}

fn prompt(said: &mut Vec<Said>, text: &str) {
    said.push(Said::Prompt(text.to_owned()));
}

/// Where a conversation is, after "messages": `with bob`, `in #Team`.
fn place(chosen: &Chosen) -> String {
    match chosen {
        Chosen::User(peer) => format!("with {peer}"),
        Chosen::Group { label, .. } => format!("in {label}"),
    }
}

/// The start of a body, to name a message in an error.
fn preview(body: &str) -> String {
    const MAX: usize = 30;
    let mut short: String = body.chars().take(MAX).collect();
    if body.chars().count() > MAX {
        short.push('…');
    }
    format!("{:?}", short)
}

/// How a group is shown: `#name`, or `#<group_id>` without a name.
pub fn group_label(id: &str, name: &str) -> String {
    if name.is_empty() {
        format!("#{id}")
    } else {
        format!("#{}", terminal_text(name))
    }
}

/// How a conversation is shown to people: the peer of a direct one,
/// `#<name>` for a group.
pub fn display_label(c: &pb::Conversation) -> String {
    if view::is_group(c) {
        group_label(&c.group_id, &c.name)
    } else {
        view::conversation_label(c)
    }
}

/// `[HH:MM:SS]` for a message sent today (local time), with the date in
/// front for older ones.
pub fn clock(sent_at_unix_ms: i64, now: DateTime<Local>) -> String {
    match Local.timestamp_millis_opt(sent_at_unix_ms).single() {
        Some(t) if t.date_naive() == now.date_naive() => t.format("[%H:%M:%S]").to_string(),
        Some(t) => t.format("[%Y-%m-%d %H:%M:%S]").to_string(),
        None => "[--:--:--]".to_owned(),
    }
}

/// A message for people: `[HH:MM:SS] sender: body`; one of yours (sent
/// from another device) is `[HH:MM:SS] you → peer: body`; in a group,
/// `[HH:MM:SS] sender in #group: body`. A membership event is an
/// [`event_line`].
pub fn message_line(m: &pb::Message, me: &str, label: &str, now: DateTime<Local>) -> String {
    if is_event(m) {
        return event_line(m, me, label, now);
    }
    let time = clock(m.sent_at_unix_ms, now);
    let actor = if m.sender == me {
        "you".to_owned()
    } else {
        terminal_text(&m.sender)
    };
    let place = if label.starts_with('#') {
        format!(" in {label}")
    } else {
        String::new()
    };
    match pb::MessageKind::try_from(m.kind) {
        Ok(pb::MessageKind::MessageEdited) => {
            let body = terminal_text(&m.body);
            return format!(
                "{time} * {actor} edited message {}{place}: {body}",
                m.target_seq
            );
        }
        Ok(pb::MessageKind::MessageDeleted) => {
            return format!("{time} * {actor} deleted message {}{place}", m.target_seq);
        }
        _ => {}
    }
    let body = terminal_text(&m.body);
    if m.sender == me {
        format!("{time} you → {label}: {body}")
    } else if label.starts_with('#') {
        format!("{time} {} in {label}: {body}", m.sender)
    } else {
        format!("{time} {}: {body}", m.sender)
    }
}

/// A message in `/history`: its seq (what `/edit` and `/delete` take), then
/// a [`message_line`] with the body of a deleted text as `[deleted]`,
/// ` (edited)` after an edited one, and, after one of yours, ` ✓` once the
/// peer read it (` (read by N)` in a group).
pub fn history_line(
    m: &pb::Message,
    me: &str,
    label: &str,
    group: bool,
    now: DateTime<Local>,
) -> String {
    let seq = m.seq;
    if m.kind != pb::MessageKind::Text as i32 {
        return format!("{seq} {}", message_line(m, me, label, now));
    }
    let mut shown = m.clone();
    if m.deleted {
        shown.body = "[deleted]".to_owned();
    }
    let mut line = format!("{seq} {}", message_line(&shown, me, label, now));
    if m.edited && !m.deleted {
        line.push_str(" (edited)");
    }
    if m.sender == me && m.read_count > 0 && !m.deleted {
        if group {
            line.push_str(&format!(" (read by {})", m.read_count));
        } else {
            line.push_str(" \u{2713}");
        }
    }
    line
}

/// A membership event for people, e.g. `[HH:MM:SS] * alice added dave to
/// #Team`; you are "you".
pub fn event_line(m: &pb::Message, me: &str, label: &str, now: DateTime<Local>) -> String {
    use pb::MessageKind as K;
    let who = |name: &str| {
        if name == me {
            "you".to_owned()
        } else {
            terminal_text(name)
        }
    };
    let actor = who(&m.sender);
    let members = m
        .members
        .iter()
        .map(|name| who(name))
        .collect::<Vec<_>>()
        .join(", ");
    let what = match K::try_from(m.kind) {
        Ok(K::GroupCreated) if members.is_empty() => format!("{actor} created {label}"),
        Ok(K::GroupCreated) => format!("{actor} created {label} with {members}"),
        Ok(K::MembersAdded) => format!("{actor} added {members} to {label}"),
        Ok(K::MemberRemoved) => format!("{actor} removed {members} from {label}"),
        Ok(K::MemberLeft) => format!("{actor} left {label}"),
        _ => format!("{actor} changed {label}: {}", terminal_text(&m.body)),
    };
    format!("{} * {what}", clock(m.sent_at_unix_ms, now))
}

/// Text that is safe to show on a terminal: control characters (escape
/// sequences could rewrite the screen) become U+FFFD, and the lines of a
/// multi-line body after the first are indented.
pub fn terminal_text(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => shown.push_str("\n    "),
            '\t' => shown.push(' '),
            c if c.is_control() => shown.push('\u{FFFD}'),
            c => shown.push(c),
        }
    }
    shown
}

/// The line printed when a session starts, e.g.
/// `connected as bob — 3 unread in 1 conversation`.
pub fn ready_summary(ready: &pb::Ready, server: Option<&str>) -> String {
    let unread: u64 = ready.conversations.iter().map(|c| c.unread_count).sum();
    let with_unread = ready
        .conversations
        .iter()
        .filter(|c| c.unread_count > 0)
        .count();
    let mut line = format!("connected as {}", ready.username);
    if unread == 0 {
        line.push_str(" — no unread messages");
    } else {
        let s = if with_unread == 1 { "" } else { "s" };
        line.push_str(&format!(
            " — {unread} unread in {with_unread} conversation{s}"
        ));
    }
    if let Some(server) = server {
        line.push_str(&format!(" (via {server})"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::samples::{event, message};

    #[test]
    fn edits_and_deletions_are_shown_as_changes() {
        let now = Local::now();
        let mut m = pb::Message {
            sender: "alice".into(),
            body: "hello".into(),
            target_seq: 3,
            kind: pb::MessageKind::MessageEdited as i32,
            sent_at_unix_ms: now.timestamp_millis(),
            ..Default::default()
        };
        assert!(message_line(&m, "bob", "alice", now).ends_with("* alice edited message 3: hello"));
        m.kind = pb::MessageKind::MessageDeleted as i32;
        assert!(
            message_line(&m, "alice", "#Team", now).ends_with("* you deleted message 3 in #Team")
        );
    }

    #[test]
    fn history_lines_mark_edits_deletions_and_receipts() {
        let now = Local::now();
        let mut m = message("alice", "new text");
        m.edited = true;
        m.read_count = 1;
        assert!(history_line(&m, "alice", "bob", false, now)
            .ends_with("you → bob: new text (edited) ✓"));
        assert!(history_line(&m, "alice", "#T", true, now).ends_with("(edited) (read by 1)"));
        assert!(history_line(&m, "bob", "alice", false, now).ends_with("alice: new text (edited)"));
        m.deleted = true;
        m.body.clear();
        assert!(history_line(&m, "bob", "alice", false, now).ends_with("alice: [deleted]"));
        assert!(
            history_line(&m, "bob", "alice", false, now).starts_with("7 ["),
            "the seq that /edit and /delete take comes first"
        );
    }

    #[test]
    fn message_lines() {
        let sent = Local.timestamp_millis_opt(1_700_000_000_123).unwrap();
        let line = message_line(&message("alice", "hi"), "bob", "alice", sent);
        assert!(line.ends_with("] alice: hi"), "{line}");
        assert!(
            line.starts_with('[') && line.len() == "[HH:MM:SS] alice: hi".len(),
            "{line}"
        );
        let mine = message_line(&message("bob", "yo"), "bob", "alice", sent);
        assert!(mine.ends_with("] you → alice: yo"), "{mine}");
        let later = sent + chrono::Duration::days(2);
        assert!(message_line(&message("alice", "hi"), "bob", "alice", later).starts_with("[2023-"));
    }

    #[test]
    fn group_lines() {
        use pb::MessageKind as K;
        let now = Local.timestamp_millis_opt(1_700_000_000_123).unwrap();
        let line = |m: &pb::Message, me: &str| {
            let line = message_line(m, me, "#Team", now);
            line.split_once("] ").expect("a clock").1.to_owned()
        };
        assert_eq!(line(&message("alice", "hi"), "bob"), "alice in #Team: hi");
        assert_eq!(line(&message("bob", "hi"), "bob"), "you → #Team: hi");
        let created = event(K::GroupCreated, "alice", &["bob", "carol"]);
        assert_eq!(
            line(&created, "dave"),
            "* alice created #Team with bob, carol"
        );
        assert_eq!(
            line(&created, "bob"),
            "* alice created #Team with you, carol"
        );
        assert_eq!(
            line(&created, "alice"),
            "* you created #Team with bob, carol"
        );
        assert_eq!(
            line(&event(K::GroupCreated, "alice", &[]), "bob"),
            "* alice created #Team"
        );
        assert_eq!(
            line(&event(K::MembersAdded, "alice", &["dave", "erin"]), "bob"),
            "* alice added dave, erin to #Team"
        );
        assert_eq!(
            line(&event(K::MemberRemoved, "alice", &["carol"]), "carol"),
            "* alice removed you from #Team"
        );
        assert_eq!(
            line(&event(K::MemberLeft, "carol", &["carol"]), "bob"),
            "* carol left #Team"
        );
    }

    #[test]
    fn terminal_text_defuses_escape_sequences() {
        assert_eq!(terminal_text("a\u{1b}[2Jb\nc"), "a\u{FFFD}[2Jb\n    c");
    }

    #[test]
    fn an_outage_is_said_once_until_the_stream_is_back() {
        let mut lines = LineRenderer::default();
        let failed = || Output::CannotConnect {
            server: "http://h:1",
            why: "connection refused",
            retry_in: Duration::from_secs(4),
        };
        assert!(
            !lines.repeats_outage(&failed()),
            "the first attempt is said"
        );
        assert!(lines.repeats_outage(&failed()), "the next ones are not");
        assert!(lines.repeats_outage(&failed()));
        let ready = pb::Ready::default();
        let back = Output::Connected {
            ready: &ready,
            via: None,
            first: false,
        };
        assert!(!lines.repeats_outage(&back), "being back is said");
        let lost = Output::Disconnected { reason: "gone" };
        assert!(!lines.repeats_outage(&lost), "losing the stream is said");
        assert!(
            lines.repeats_outage(&failed()),
            "it already said reconnecting"
        );
    }

    #[test]
    fn summaries() {
        let conversation = |unread| pb::Conversation {
            unread_count: unread,
            ..Default::default()
        };
        let mut ready = pb::Ready {
            username: "bob".into(),
            ..Default::default()
        };
        assert_eq!(
            ready_summary(&ready, None),
            "connected as bob — no unread messages"
        );
        ready.conversations = vec![conversation(3), conversation(0)];
        assert_eq!(
            ready_summary(&ready, None),
            "connected as bob — 3 unread in 1 conversation"
        );
        ready.conversations.push(conversation(1));
        assert_eq!(
            ready_summary(&ready, Some("http://h:1")),
            "connected as bob — 4 unread in 2 conversations (via http://h:1)"
        );
    }

    #[test]
    fn display_labels() {
        let group = pb::Conversation {
            conversation_id: "g1".into(),
            kind: pb::ConversationKind::Group as i32,
            group_id: "g1".into(),
            name: "My\tTeam".into(),
            ..Default::default()
        };
        assert_eq!(display_label(&group), "#My Team");
        let unnamed = pb::Conversation {
            name: String::new(),
            ..group.clone()
        };
        assert_eq!(display_label(&unnamed), "#g1");
        let direct = pb::Conversation {
            kind: pb::ConversationKind::Direct as i32,
            peer: "bob".into(),
            ..Default::default()
        };
        assert_eq!(display_label(&direct), "bob");
    }
}

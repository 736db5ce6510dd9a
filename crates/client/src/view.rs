//! How things look: the lines the client prints, for people (interactive
//! mode) and for scripts (the stable formats of the subcommands), and the
//! two output streams.
//!
//! Rust's stdout is line-buffered whatever it is connected to, so every line
//! printed here reaches a pipe or a pseudo-terminal at once. Write errors
//! (a closed pipe) are ignored: there is no one left to tell.

use std::fmt::Display;
use std::io::Write;

use chat_proto as pb;
use chrono::{DateTime, Local, TimeZone, Utc};

/// Prints one line on stdout.
pub fn out(line: impl Display) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// Prints one line on stderr.
pub fn err(line: impl Display) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Prints `text` without a newline and flushes it (a prompt).
pub fn prompt(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

/// Prints `text` on stderr without a newline (a prompt that must not mix
/// with the results on stdout).
pub fn prompt_err(text: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(text.as_bytes());
    let _ = stderr.flush();
}

/// How a conversation is named: the peer of a direct one, `#<group_id>`
/// for a group.
pub fn conversation_label(c: &pb::Conversation) -> String {
    if !c.peer.is_empty() {
        c.peer.clone()
    } else if !c.group_id.is_empty() {
        format!("#{}", c.group_id)
    } else {
        c.conversation_id.clone()
    }
}

/// `[HH:MM:SS]` in local time for a message of today, with the date in
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
/// `[HH:MM:SS] sender in #group: body`.
pub fn message_line(m: &pb::Message, me: &str, label: &str, now: DateTime<Local>) -> String {
    let time = clock(m.sent_at_unix_ms, now);
    let body = terminal_text(&m.body);
    if m.sender == me {
        format!("{time} you → {label}: {body}")
    } else if label.starts_with('#') {
        format!("{time} {} in {label}: {body}", m.sender)
    } else {
        format!("{time} {}: {body}", m.sender)
    }
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

/// A field of a tab-separated record: backslash, tab, newline and carriage
/// return are escaped, so a record is always one line.
pub fn escape_field(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '\t' => escaped.push_str("\\t"),
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// RFC 3339 in UTC with milliseconds, e.g. `2024-05-01T12:00:00.123Z`.
pub fn rfc3339(unix_ms: i64) -> String {
    match Utc.timestamp_millis_opt(unix_ms).single() {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => unix_ms.to_string(),
    }
}

/// `history` output: `<seq>\t<sent_at>\t<sender>\t<body>`.
pub fn history_record(m: &pb::Message) -> String {
    format!(
        "{}\t{}\t{}\t{}",
        m.seq,
        rfc3339(m.sent_at_unix_ms),
        escape_field(&m.sender),
        escape_field(&m.body)
    )
}

/// `unread` output: `<peer>\t<unread_count>\t<last_seq>`.
pub fn unread_record(c: &pb::Conversation) -> String {
    format!(
        "{}\t{}\t{}",
        escape_field(&conversation_label(c)),
        c.unread_count,
        c.last_seq
    )
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

    fn message(sender: &str, body: &str) -> pb::Message {
        pb::Message {
            conversation_id: "c1".into(),
            seq: 7,
            sender: sender.into(),
            body: body.into(),
            sent_at_unix_ms: 1_700_000_000_123,
            ..Default::default()
        }
    }

    #[test]
    fn records_are_one_line_and_reversible() {
        let m = message("alice", "a\tb\nc\\d\r");
        assert_eq!(
            history_record(&m),
            "7\t2023-11-14T22:13:20.123Z\talice\ta\\tb\\nc\\\\d\\r"
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
    fn terminal_text_defuses_escape_sequences() {
        assert_eq!(terminal_text("a\u{1b}[2Jb\nc"), "a\u{FFFD}[2Jb\n    c");
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
}

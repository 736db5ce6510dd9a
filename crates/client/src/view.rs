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

fn is_group(c: &pb::Conversation) -> bool {
    c.peer.is_empty() && !c.group_id.is_empty()
}

/// How a conversation is shown to people: the peer of a direct one,
/// `#<name>` for a group.
pub fn display_label(c: &pb::Conversation) -> String {
    if is_group(c) && !c.name.is_empty() {
        format!("#{}", terminal_text(&c.name))
    } else {
        conversation_label(c)
    }
}

/// A message kind in lower snake case, as in the `history` records:
/// `text`, `group_created`, `members_added`, ...
pub fn kind_name(kind: i32) -> String {
    match pb::MessageKind::try_from(kind) {
        Ok(kind) => kind
            .as_str_name()
            .trim_start_matches("MESSAGE_KIND_")
            .to_ascii_lowercase(),
        Err(_) => format!("kind_{kind}"),
    }
}

/// A group role in lower case, as in the `group info` records.
pub fn role_name(role: i32) -> &'static str {
    use pb::GroupRole as R;
    match R::try_from(role) {
        Ok(R::Owner) => "owner",
        Ok(R::Admin) => "admin",
        Ok(R::Member) => "member",
        Ok(R::Unspecified) | Err(_) => "unknown",
    }
}

/// A membership event of a group (not text).
pub fn is_event(m: &pb::Message) -> bool {
    use pb::MessageKind as K;
    matches!(
        K::try_from(m.kind),
        Ok(K::GroupCreated | K::MembersAdded | K::MemberRemoved | K::MemberLeft)
    )
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

/// A message in `/history`: a [`message_line`] with the body of a deleted
/// text as `[deleted]`, ` (edited)` after an edited one, and, after one of
/// yours, ` ✓` once the peer read it (` (read by N)` in a group).
pub fn history_line(
    m: &pb::Message,
    me: &str,
    label: &str,
    group: bool,
    now: DateTime<Local>,
) -> String {
    if m.kind != pb::MessageKind::Text as i32 {
        return message_line(m, me, label, now);
    }
    let mut shown = m.clone();
    if m.deleted {
        shown.body = "[deleted]".to_owned();
    }
    let mut line = message_line(&shown, me, label, now);
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

/// `history` output: `<seq>\t<sent_at>\t<sender>\t<body>`; a membership
/// event is `<seq>\t<sent_at>\t<actor>\t<members>\t<kind>`, the members
/// separated by spaces (any message that is not text has its kind as a
/// fifth field).
pub fn history_record(m: &pb::Message) -> String {
    let text = if is_event(m) {
        m.members.join(" ")
    } else {
        m.body.clone()
    };
    let mut record = format!(
        "{}\t{}\t{}\t{}",
        m.seq,
        rfc3339(m.sent_at_unix_ms),
        escape_field(&m.sender),
        escape_field(&text)
    );
    if m.kind != pb::MessageKind::Text as i32 {
        record.push('\t');
        record.push_str(&kind_name(m.kind));
    }
    record
}

/// `unread` output: `<peer>\t<unread_count>\t<last_seq>`; a group is
/// `#<group_id>\t<unread_count>\t<last_seq>\t<name>`.
pub fn unread_record(c: &pb::Conversation) -> String {
    let mut record = format!(
        "{}\t{}\t{}",
        escape_field(&conversation_label(c)),
        c.unread_count,
        c.last_seq
    );
    if is_group(c) {
        record.push('\t');
        record.push_str(&escape_field(&c.name));
    }
    record
}

/// `group list` output: `<group_id>\t<name>\t<unread_count>`.
pub fn group_record(c: &pb::Conversation) -> String {
    format!(
        "{}\t{}\t{}",
        escape_field(&c.group_id),
        escape_field(&c.name),
        c.unread_count
    )
}

/// `group info` output: `<group_id>\t<name>`, then `<username>\t<role>`
/// per member.
pub fn group_info_records(g: &pb::Group) -> Vec<String> {
    std::iter::once(format!(
        "{}\t{}",
        escape_field(&g.group_id),
        escape_field(&g.name)
    ))
    .chain(
        g.members
            .iter()
            .map(|m| format!("{}\t{}", escape_field(&m.username), role_name(m.role))),
    )
    .collect()
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

    use super::*;

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
    }

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

    fn event(kind: pb::MessageKind, sender: &str, members: &[&str]) -> pb::Message {
        pb::Message {
            kind: kind as i32,
            members: members.iter().map(|m| m.to_string()).collect(),
            body: members.join(" "),
            ..message(sender, "")
        }
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
    fn group_records() {
        let added = event(pb::MessageKind::MembersAdded, "alice", &["dave", "erin"]);
        assert_eq!(
            history_record(&added),
            "7\t2023-11-14T22:13:20.123Z\talice\tdave erin\tmembers_added"
        );
        let group = pb::Conversation {
            conversation_id: "g1".into(),
            kind: pb::ConversationKind::Group as i32,
            group_id: "g1".into(),
            name: "My\tTeam".into(),
            unread_count: 2,
            last_seq: 9,
            ..Default::default()
        };
        assert_eq!(unread_record(&group), "#g1\t2\t9\tMy\\tTeam");
        assert_eq!(group_record(&group), "g1\tMy\\tTeam\t2");
        assert_eq!(display_label(&group), "#My Team");
        let direct = pb::Conversation {
            kind: pb::ConversationKind::Direct as i32,
            peer: "bob".into(),
            unread_count: 1,
            last_seq: 3,
            ..Default::default()
        };
        assert_eq!(unread_record(&direct), "bob\t1\t3");
        assert_eq!(display_label(&direct), "bob");
        let info = pb::Group {
            group_id: "g1".into(),
            name: "Team".into(),
            members: vec![
                pb::GroupMember {
                    username: "alice".into(),
                    role: pb::GroupRole::Owner as i32,
                    joined_seq: 1,
                },
                pb::GroupMember {
                    username: "bob".into(),
                    role: pb::GroupRole::Member as i32,
                    joined_seq: 1,
                },
            ],
            last_seq: 1,
        };
        assert_eq!(
            group_info_records(&info),
            ["g1\tTeam", "alice\towner", "bob\tmember"]
        );
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

//! The two output streams, and the records the one-shot subcommands print
//! for scripts (their stable formats, see the crate docs), with the names
//! of kinds and roles they share with the interactive mode. What people
//! read in interactive mode is formatted in [`crate::interactive::render`],
//! which writes through the streams here.
//!
//! Rust's stdout is line-buffered whatever it is connected to, so every line
//! printed here reaches a pipe or a pseudo-terminal at once. Write errors
//! (a closed pipe) are ignored: there is no one left to tell.

use std::fmt::Display;
use std::io::Write;

use chat_proto as pb;
use chrono::{TimeZone, Utc};

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

/// A group's conversation (not a direct one).
pub fn is_group(c: &pb::Conversation) -> bool {
    c.peer.is_empty() && !c.group_id.is_empty()
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

/// `history` output: `<seq>\t<sent_at>\t<sender>\t<body>` for a text;
/// anything more has a fifth field:
///
/// - a text edited since: `edited`; a deleted one: `deleted` (its body
///   is empty);
/// - an edit or a deletion: `message_edited` or `message_deleted`, and a
///   sixth field, the seq of the message it changed (the fourth field is
///   the new text, or empty);
/// - a membership event: `<seq>\t<sent_at>\t<actor>\t<members>\t<kind>`,
///   the members separated by spaces.
pub fn history_record(m: &pb::Message) -> String {
    use pb::MessageKind as K;
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
    let mark = match K::try_from(m.kind) {
        Ok(K::Text) if m.deleted => Some("deleted".to_owned()),
        Ok(K::Text) if m.edited => Some("edited".to_owned()),
        Ok(K::Text) => None,
        Ok(K::MessageEdited | K::MessageDeleted) => {
            Some(format!("{}\t{}", kind_name(m.kind), m.target_seq))
        }
        _ => Some(kind_name(m.kind)),
    };
    if let Some(mark) = mark {
        record.push('\t');
        record.push_str(&mark);
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

/// Messages for the formatting tests of both modes.
#[cfg(test)]
pub(crate) mod samples {
    use chat_proto as pb;

    pub fn message(sender: &str, body: &str) -> pb::Message {
        pb::Message {
            conversation_id: "c1".into(),
            seq: 7,
            sender: sender.into(),
            body: body.into(),
            sent_at_unix_ms: 1_700_000_000_123,
            ..Default::default()
        }
    }

    pub fn event(kind: pb::MessageKind, sender: &str, members: &[&str]) -> pb::Message {
        pb::Message {
            kind: kind as i32,
            members: members.iter().map(|m| m.to_string()).collect(),
            body: members.join(" "),
            ..message(sender, "")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::samples::{event, message};
    use super::*;

    #[test]
    fn records_are_one_line_and_reversible() {
        let m = message("alice", "a\tb\nc\\d\r");
        assert_eq!(
            history_record(&m),
            "7\t2023-11-14T22:13:20.123Z\talice\ta\\tb\\nc\\\\d\\r"
        );
    }

    #[test]
    fn records_mark_edits_and_deletions() {
        let mut m = message("alice", "new text");
        m.edited = true;
        assert_eq!(
            history_record(&m),
            "7\t2023-11-14T22:13:20.123Z\talice\tnew text\tedited"
        );
        m.deleted = true;
        m.body.clear();
        assert_eq!(
            history_record(&m),
            "7\t2023-11-14T22:13:20.123Z\talice\t\tdeleted"
        );
        let edit = pb::Message {
            kind: pb::MessageKind::MessageEdited as i32,
            target_seq: 3,
            ..message("alice", "fixed")
        };
        assert_eq!(
            history_record(&edit),
            "7\t2023-11-14T22:13:20.123Z\talice\tfixed\tmessage_edited\t3"
        );
        let deletion = pb::Message {
            kind: pb::MessageKind::MessageDeleted as i32,
            target_seq: 4,
            ..message("alice", "")
        };
        assert_eq!(
            history_record(&deletion),
            "7\t2023-11-14T22:13:20.123Z\talice\t\tmessage_deleted\t4"
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
        let direct = pb::Conversation {
            kind: pb::ConversationKind::Direct as i32,
            peer: "bob".into(),
            unread_count: 1,
            last_seq: 3,
            ..Default::default()
        };
        assert_eq!(unread_record(&direct), "bob\t1\t3");
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
}

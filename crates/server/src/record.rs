//! The record one node publishes to another's inbox: a versioned wire
//! format of its own, not the session's [`Event`] nor the store's
//! [`StoredMessage`], with explicit conversions both ways.
//!
//! Version 1 is JSON: `{"v":1,"to":[…],"event":{"type":…,…},"at":…}`.
//! Its shape is fixed — records of it sit in the dead-letter queue and
//! reach nodes of other releases during a rolling upgrade — so a field
//! added to a domain type changes nothing here until this module says how
//! it travels; a change of shape is a new version. In version 1 a
//! membership event carries whom it concerns in `body`, separated by
//! spaces (usernames hold none), as it always did.
//!
//! This module knows neither the bus nor the sessions' queues.

use std::sync::Arc;

use chat_store::{MessageKind, StoredMessage};
use serde::{Deserialize, Serialize};

use crate::sessions::Event;

/// The version of [`Envelope`] this node writes and reads.
const VERSION: u32 = 1;

/// A delivery record: an event for some users of the receiving node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Envelope {
    v: u32,
    pub to: Vec<String>,
    event: RecordEvent,
    /// When the sending node encoded the record (Unix ms), for the bus
    /// lag; absent from records of nodes that do not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<i64>,
}

impl Envelope {
    /// The record of `event` for `to`, encoded at `at`.
    pub(crate) fn encode(to: Vec<String>, event: &Event, at: i64) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(&Envelope {
            v: VERSION,
            to,
            event: RecordEvent::from(event),
            at: Some(at),
        })
    }

    /// Decodes a record of this node's version, or says why it cannot.
    pub(crate) fn decode(record: &[u8]) -> Result<Envelope, String> {
        match serde_json::from_slice::<OnlyVersion>(record) {
            Ok(OnlyVersion { v }) if v != VERSION => Err(format!(
                "delivery record of unknown envelope version {v} (this node reads version {VERSION})"
            )),
            _ => serde_json::from_slice::<Envelope>(record)
                .map_err(|e| format!("undecodable delivery record: {e}")),
        }
    }

    /// The event for the sessions of this node.
    pub(crate) fn event(&self) -> Event {
        self.event.clone().into()
    }
}

/// Only the version of an envelope, read first so that a record of another
/// version is reported as such, whatever its shape.
#[derive(Deserialize)]
struct OnlyVersion {
    v: u32,
}

/// The event of a version 1 record.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum RecordEvent {
    Message(MessageRecord),
    ReadUpdate {
        conversation_id: String,
        username: String,
        read_seq: u64,
        unread_count: u64,
    },
    Presence {
        username: String,
        online: bool,
    },
    Typing {
        conversation_id: String,
        username: String,
    },
    Revoked {
        token: u64,
    },
}

/// A message of a version 1 record.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MessageRecord {
    id: String,
    conversation_id: String,
    seq: u64,
    sender: String,
    /// The text; for a membership event, whom it concerns, separated by
    /// spaces.
    body: String,
    client_msg_id: String,
    sent_at_unix_ms: i64,
    #[serde(default)]
    kind: KindRecord,
    #[serde(default)]
    target_seq: u64,
    #[serde(default)]
    edited: bool,
    #[serde(default)]
    deleted: bool,
}

/// The kinds of version 1, by their names on the wire.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum KindRecord {
    #[default]
    Text,
    GroupCreated,
    MembersAdded,
    MemberRemoved,
    MemberLeft,
    MessageEdited,
    MessageDeleted,
}

impl From<MessageKind> for KindRecord {
    fn from(kind: MessageKind) -> Self {
        match kind {
            MessageKind::Text => KindRecord::Text,
            MessageKind::GroupCreated => KindRecord::GroupCreated,
            MessageKind::MembersAdded => KindRecord::MembersAdded,
            MessageKind::MemberRemoved => KindRecord::MemberRemoved,
            MessageKind::MemberLeft => KindRecord::MemberLeft,
            MessageKind::MessageEdited => KindRecord::MessageEdited,
            MessageKind::MessageDeleted => KindRecord::MessageDeleted,
        }
    }
}

impl From<KindRecord> for MessageKind {
    fn from(kind: KindRecord) -> Self {
        match kind {
            KindRecord::Text => MessageKind::Text,
            KindRecord::GroupCreated => MessageKind::GroupCreated,
            KindRecord::MembersAdded => MessageKind::MembersAdded,
            KindRecord::MemberRemoved => MessageKind::MemberRemoved,
            KindRecord::MemberLeft => MessageKind::MemberLeft,
            KindRecord::MessageEdited => MessageKind::MessageEdited,
            KindRecord::MessageDeleted => MessageKind::MessageDeleted,
        }
    }
}

impl From<&StoredMessage> for MessageRecord {
    fn from(m: &StoredMessage) -> Self {
        Self {
            id: m.id.clone(),
            conversation_id: m.conversation_id.clone(),
            seq: m.seq,
            sender: m.sender.clone(),
            body: if m.kind.is_membership() {
                m.members.join(" ")
            } else {
                m.body.clone()
            },
            client_msg_id: m.client_msg_id.clone(),
            sent_at_unix_ms: m.sent_at_unix_ms,
            kind: m.kind.into(),
            target_seq: m.target_seq,
            edited: m.edited,
            deleted: m.deleted,
        }
    }
}

impl From<MessageRecord> for StoredMessage {
    fn from(r: MessageRecord) -> Self {
        let kind = MessageKind::from(r.kind);
        let (body, members) = if kind.is_membership() {
            (
                String::new(),
                r.body.split_whitespace().map(str::to_owned).collect(),
            )
        } else {
            (r.body, Vec::new())
        };
        StoredMessage {
            id: r.id,
            conversation_id: r.conversation_id,
            seq: r.seq,
            sender: r.sender,
            body,
            client_msg_id: r.client_msg_id,
            sent_at_unix_ms: r.sent_at_unix_ms,
            kind,
            target_seq: r.target_seq,
            edited: r.edited,
            deleted: r.deleted,
            members,
        }
    }
}

impl From<&Event> for RecordEvent {
    fn from(event: &Event) -> Self {
        match event {
            Event::Message(m) => RecordEvent::Message(MessageRecord::from(&**m)),
            Event::ReadUpdate {
                conversation_id,
                username,
                read_seq,
                unread_count,
            } => RecordEvent::ReadUpdate {
                conversation_id: conversation_id.clone(),
                username: username.clone(),
                read_seq: *read_seq,
                unread_count: *unread_count,
            },
            Event::Presence { username, online } => RecordEvent::Presence {
                username: username.clone(),
                online: *online,
            },
            Event::Typing {
                conversation_id,
                username,
            } => RecordEvent::Typing {
                conversation_id: conversation_id.clone(),
                username: username.clone(),
            },
            Event::Revoked { token } => RecordEvent::Revoked { token: *token },
        }
    }
}

impl From<RecordEvent> for Event {
    fn from(event: RecordEvent) -> Self {
        match event {
            RecordEvent::Message(m) => Event::Message(Arc::new(m.into())),
            RecordEvent::ReadUpdate {
                conversation_id,
                username,
                read_seq,
                unread_count,
            } => Event::ReadUpdate {
                conversation_id,
                username,
                read_seq,
                unread_count,
            },
            RecordEvent::Presence { username, online } => Event::Presence { username, online },
            RecordEvent::Typing {
                conversation_id,
                username,
            } => Event::Typing {
                conversation_id,
                username,
            },
            RecordEvent::Revoked { token } => Event::Revoked { token },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: MessageKind, body: &str, members: &[&str]) -> Event {
        Event::Message(Arc::new(StoredMessage {
            id: "m1".into(),
            conversation_id: "g1".into(),
            seq: 3,
            sender: "alice".into(),
            body: body.into(),
            client_msg_id: "k".into(),
            sent_at_unix_ms: 1_700_000_000_000,
            kind,
            target_seq: 0,
            edited: false,
            deleted: false,
            members: members.iter().map(|m| m.to_string()).collect(),
        }))
    }

    /// Version 1 on the wire, exactly: what a node of another release
    /// writes and reads, and what the dead-letter queue keeps.
    #[test]
    fn version_1_is_byte_for_byte_what_it_was() {
        let record = Envelope::encode(
            vec!["bob".into()],
            &event(MessageKind::MembersAdded, "", &["carol", "dave"]),
            42,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(record.clone()).unwrap(),
            r#"{"v":1,"to":["bob"],"event":{"type":"message","id":"m1","conversation_id":"g1","seq":3,"sender":"alice","body":"carol dave","client_msg_id":"k","sent_at_unix_ms":1700000000000,"kind":"members_added","target_seq":0,"edited":false,"deleted":false},"at":42}"#
        );
        let Event::Message(back) = Envelope::decode(&record).unwrap().event() else {
            panic!("a message");
        };
        assert_eq!(
            (back.body.as_str(), back.members.clone()),
            ("", vec!["carol".to_string(), "dave".to_string()])
        );
        let revoked =
            Envelope::encode(vec!["bob".into()], &Event::Revoked { token: 7 }, 1).unwrap();
        assert_eq!(
            String::from_utf8(revoked).unwrap(),
            r#"{"v":1,"to":["bob"],"event":{"type":"revoked","token":7},"at":1}"#
        );
    }

    #[test]
    fn text_and_every_event_survive_the_round_trip() {
        for event in [
            event(MessageKind::Text, "hello there", &[]),
            event(MessageKind::MessageEdited, "new text", &[]),
            Event::Typing {
                conversation_id: "c".into(),
                username: "bob".into(),
            },
        ] {
            let record = Envelope::encode(vec!["x".into()], &event, 5).unwrap();
            let back = Envelope::decode(&record).unwrap();
            assert_eq!(format!("{:?}", back.event()), format!("{event:?}"));
            assert_eq!((back.to, back.at), (vec!["x".to_string()], Some(5)));
        }
        assert!(Envelope::decode(br#"{"v":2,"to":[],"event":{}}"#)
            .unwrap_err()
            .contains("unknown envelope version 2"));
    }
}

//! What a message or an event is before and after its commit, and the key
//! of a direct conversation: the shapes both backends write.
//!
//! The backends decide nothing here; they give a [`Draft`] the
//! conversation's next seq and store it.

use crate::{new_id, MessageChange, MessageKind, NewMessage, Result, StoreError, StoredMessage};

/// A message or event to commit: everything but its seq, which the backend
/// takes from the conversation (the next one) when it inserts the row.
#[derive(Debug, Clone)]
pub(crate) struct Draft {
    pub id: String,
    pub conversation_id: String,
    pub sender: String,
    pub body: String,
    pub client_msg_id: String,
    pub sent_at_unix_ms: i64,
    pub kind: MessageKind,
    pub target_seq: u64,
}

impl Draft {
    /// A text message of `conversation_id`, sent now unless it says when.
    pub(crate) fn text(conversation_id: String, message: NewMessage, now: i64) -> Self {
        Self {
            id: new_id('m'),
            conversation_id,
            sender: message.sender,
            body: message.body,
            client_msg_id: message.client_msg_id,
            sent_at_unix_ms: message.sent_at_unix_ms.unwrap_or(now),
            kind: MessageKind::Text,
            target_seq: 0,
        }
    }

    /// A membership event of `group_id` made by `actor`, naming the
    /// members it concerns. The server makes it on its own, so its
    /// idempotency key is derived from its id (unique per sender because
    /// the id is).
    pub(crate) fn membership(
        group_id: &str,
        actor: &str,
        kind: MessageKind,
        concerned: &[String],
        now: i64,
    ) -> Self {
        let id = new_id('m');
        Self {
            client_msg_id: format!("event-{id}"),
            id,
            conversation_id: group_id.to_owned(),
            sender: actor.to_owned(),
            body: concerned.join(" "),
            sent_at_unix_ms: now,
            kind,
            target_seq: 0,
        }
    }

    /// The event of an edit (the new text) or a deletion (no text) of
    /// message `change.seq`, idempotent by the editor's key like a send.
    pub(crate) fn change(change: &MessageChange, now: i64) -> Self {
        let (kind, body) = match &change.body {
            Some(text) => (MessageKind::MessageEdited, text.clone()),
            None => (MessageKind::MessageDeleted, String::new()),
        };
        Self {
            id: new_id('m'),
            conversation_id: change.conversation_id.clone(),
            sender: change.editor.clone(),
            body,
            client_msg_id: change.client_msg_id.clone(),
            sent_at_unix_ms: now,
            kind,
            target_seq: change.seq,
        }
    }

    /// The message as committed with `seq`.
    pub(crate) fn committed(self, seq: u64) -> StoredMessage {
        StoredMessage {
            id: self.id,
            conversation_id: self.conversation_id,
            seq,
            sender: self.sender,
            body: self.body,
            client_msg_id: self.client_msg_id,
            sent_at_unix_ms: self.sent_at_unix_ms,
            kind: self.kind,
            target_seq: self.target_seq,
            edited: false,
            deleted: false,
        }
    }
}

/// The key that makes the direct conversation of two users unique:
/// `alice|bob`, the two usernames sorted bytewise. Talking to oneself is
/// refused.
pub(crate) fn direct_key(a: &str, b: &str) -> Result<String> {
    match a.cmp(b) {
        std::cmp::Ordering::Less => Ok(format!("{a}|{b}")),
        std::cmp::Ordering::Greater => Ok(format!("{b}|{a}")),
        std::cmp::Ordering::Equal => Err(StoreError::Invalid(
            "a direct conversation needs two users".into(),
        )),
    }
}

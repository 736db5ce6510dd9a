//! The rules of messages: what a message or an event is before and after
//! its commit ([`Draft`]), the key of a direct conversation, and the order
//! in which a send ([`append`]) or an edit or deletion
//! ([`change_message`]) looks at retries, conversations, membership and
//! targets, and what it answers.
//!
//! A backend provides [`MessageTx`], its primitives inside one
//! transaction, and decides none of the above.

use crate::{
    new_id, Appended, MessageChange, MessageKind, NewMessage, Result, StoreError, StoredMessage,
    Target,
};

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
    /// For a membership event, whom it concerns.
    pub members: Vec<String>,
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
            members: Vec::new(),
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
            body: String::new(),
            sent_at_unix_ms: now,
            kind,
            target_seq: 0,
            members: concerned.to_vec(),
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
            members: Vec::new(),
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
            members: self.members,
        }
    }

    /// What the `body` column holds for it (see [`body_column`]).
    pub(crate) fn body_column(&self) -> String {
        body_column(self.kind, &self.body, &self.members)
    }
}

/// What the `body` column of `messages` holds: the text, or for a
/// membership event the usernames it concerns, separated by spaces
/// (usernames hold none). The one encoding of both backends.
pub(crate) fn body_column(kind: MessageKind, body: &str, members: &[String]) -> String {
    if kind.is_membership() {
        members.join(" ")
    } else {
        body.to_owned()
    }
}

/// The text and the members of a message whose `body` column is
/// `column` (the inverse of [`body_column`]).
pub(crate) fn from_body_column(kind: MessageKind, column: String) -> (String, Vec<String>) {
    if kind.is_membership() {
        let members = column.split_whitespace().map(str::to_owned).collect();
        (String::new(), members)
    } else {
        (column, Vec::new())
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

/// What a backend does for a send or a change of a message, inside the
/// operation's transaction.
#[allow(async_fn_in_trait)] // crate-private; each backend's futures are as `Send` as it needs
pub(crate) trait MessageTx {
    /// Looks up, together, the original of a retry of `(sender,
    /// client_msg_id)` (with its conversation's members) and the
    /// conversation `target` names, if `sender` may write to it.
    async fn look_up(
        &mut self,
        sender: &str,
        client_msg_id: &str,
        target: Lookup<'_>,
    ) -> Result<(Option<Appended>, Option<String>)>;
    /// Creates the direct conversation of `a` and `b` under `key`, or
    /// finds the one created meanwhile; `None` when `b` does not exist.
    async fn create_direct(
        &mut self,
        key: &str,
        a: &str,
        b: &str,
        now: i64,
    ) -> Result<Option<String>>;
    /// Inserts `draft` with its conversation's next seq (locking the
    /// conversation against its other writers until the end of the
    /// transaction) and reads the members under that lock.
    async fn insert(&mut self, draft: Draft) -> Result<(StoredMessage, Vec<String>)>;
    /// Locks conversation `conversation_id` for a change by `editor` and
    /// looks up, under the lock, the original of a retry of `(editor,
    /// client_msg_id)`; also says whether `editor` is a member.
    async fn lock_for_change(
        &mut self,
        editor: &str,
        conversation_id: &str,
        client_msg_id: &str,
    ) -> Result<(Option<Appended>, bool)>;
    /// Applies `change` to its target if that is live text `change.editor`
    /// sent and may see (from the seq they joined at on), then inserts
    /// `event` with the next seq and reads the members; `None`, and
    /// nothing kept, when there is no such message.
    async fn change_target(
        &mut self,
        change: &MessageChange,
        event: Draft,
    ) -> Result<Option<(StoredMessage, Vec<String>)>>;
}

/// The conversation a message is for, as [`MessageTx::look_up`] looks
/// for it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Lookup<'a> {
    /// The direct conversation with this key.
    Direct(&'a str),
    /// This group, if the sender is a member.
    Group(&'a str),
    /// None: the target is refused whatever the store holds.
    Nothing,
}

/// Commits a text message: a retry answers the original (whatever became
/// of its conversation since); a direct conversation is created on first
/// use, with a user that exists; a group takes messages from its members
/// only, as they are when the seq is taken.
pub(crate) async fn append<T: MessageTx>(
    tx: &mut T,
    message: NewMessage,
    now: i64,
) -> Result<Appended> {
    let key = match &message.target {
        Target::Direct(peer) => Some(direct_key(&message.sender, peer)),
        Target::Group(_) => None,
    };
    let lookup = match (&message.target, &key) {
        (Target::Group(id), _) => Lookup::Group(id),
        (Target::Direct(_), Some(Ok(key))) => Lookup::Direct(key),
        (Target::Direct(_), _) => Lookup::Nothing,
    };
    let (original, found) = tx
        .look_up(&message.sender, &message.client_msg_id, lookup)
        .await?;
    if let Some(original) = original {
        return Ok(original);
    }
    let conversation_id = match (found, &message.target, key) {
        (Some(id), _, _) => id,
        (None, Target::Direct(peer), Some(key)) => tx
            .create_direct(&key?, &message.sender, peer, now)
            .await?
            .ok_or(StoreError::NotFound)?,
        (None, _, _) => return Err(StoreError::NotFound),
    };
    let (message, members) = tx
        .insert(Draft::text(conversation_id, message, now))
        .await?;
    // Membership was looked at before the lock: one removed meanwhile (on
    // any server) is not among the members read under it.
    if !members.contains(&message.sender) {
        return Err(StoreError::NotFound);
    }
    Ok(Appended {
        message,
        members,
        duplicate: false,
    })
}

/// Edits or deletes a text message by its sender, with its event: a retry
/// answers the original event; anything but the editor's own live text
/// message, visible to them, answers like a message that does not exist.
pub(crate) async fn change_message<T: MessageTx>(
    tx: &mut T,
    change: MessageChange,
    now: i64,
) -> Result<Appended> {
    let (original, member) = tx
        .lock_for_change(
            &change.editor,
            &change.conversation_id,
            &change.client_msg_id,
        )
        .await?;
    if let Some(original) = original {
        return Ok(original);
    }
    if !member {
        return Err(StoreError::NotFound);
    }
    let event = Draft::change(&change, now);
    let (message, members) = tx
        .change_target(&change, event)
        .await?
        .ok_or(StoreError::NotFound)?;
    Ok(Appended {
        message,
        members,
        duplicate: false,
    })
}

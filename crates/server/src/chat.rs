//! [`Chat`]: the operations on conversations, messages and groups, shared
//! by every transport (the live stream, the unary RPCs, the HTTP API).
//!
//! Each one checks its input, commits to the store, and only then tells the
//! live sessions through [`Delivery`]: a session never hears of a message
//! that is not durable. Transports call these and never the store.

use std::sync::Arc;
use std::time::Instant;

use chat_store::{
    Appended, ConversationSummary, GroupInfo, HistoryPage, HistoryQuery, NewMessage, ReadCursor,
    Store, StoredMessage, Target,
};

use crate::config::Limits;
use crate::rate::Rates;
use crate::routing::{Delivery, Mode};
use crate::sessions::{Event, SessionId};
use crate::telemetry::Metrics;
use crate::{names, ApiError};

/// Conversations, messages and groups.
pub struct Chat {
    store: Arc<dyn Store>,
    delivery: Arc<Delivery>,
    metrics: Arc<Metrics>,
    limits: Limits,
    rates: Arc<Rates>,
}

/// A send as received, before validation.
pub struct SendInput {
    pub target: Option<SendTarget>,
    pub body: String,
    pub client_msg_id: String,
    /// When the server received it: where the send-to-commit latency
    /// starts.
    pub received: Instant,
}

pub enum SendTarget {
    User(String),
    Group(String),
}

/// The longest client_msg_id accepted.
pub const MAX_CLIENT_MSG_ID: usize = 64;

impl Chat {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        delivery: Arc<Delivery>,
        limits: Limits,
        rates: Arc<Rates>,
    ) -> Self {
        Self {
            metrics: delivery.metrics.clone(),
            store,
            delivery,
            limits,
            rates,
        }
    }

    /// Commits a message from `sender` and delivers it to the live sessions
    /// of every member (the sender's other sessions included). `origin` is
    /// the session that sent it, which gets an ack instead.
    pub async fn send_message(
        &self,
        sender: &str,
        input: SendInput,
        origin: Option<SessionId>,
    ) -> Result<Appended, ApiError> {
        let received = input.received;
        let answer = match self.new_message(sender, input) {
            Ok((message, is_direct)) => {
                let appended = self.store.append_message(message).await;
                self.committed(appended, is_direct, origin, received).await
            }
            Err(refused) => Err(refused),
        };
        if let Err(e) = &answer {
            self.metrics.send_failed(e);
        }
        answer
    }

    /// [`Self::send_message`] for several sends of one sender, committed
    /// together and in order; one answer per send, in the same order.
    pub async fn send_messages(
        &self,
        sender: &str,
        inputs: Vec<SendInput>,
        origin: Option<SessionId>,
    ) -> Vec<Result<Appended, ApiError>> {
        let mut answers: Vec<Option<Result<Appended, ApiError>>> = Vec::new();
        let mut valid = Vec::with_capacity(inputs.len());
        let mut kinds = Vec::with_capacity(inputs.len());
        for input in inputs {
            let received = input.received;
            match self.new_message(sender, input) {
                Ok((message, is_direct)) => {
                    valid.push(message);
                    kinds.push((is_direct, received));
                    answers.push(None);
                }
                Err(e) => answers.push(Some(Err(e))),
            }
        }
        let messages = valid;
        let mut committed = self
            .store
            .append_messages(messages)
            .await
            .into_iter()
            .zip(kinds);
        let mut done = Vec::with_capacity(answers.len());
        for answer in answers {
            done.push(match answer {
                Some(refused) => refused,
                None => match committed.next() {
                    Some((appended, (is_direct, received))) => {
                        self.committed(appended, is_direct, origin, received).await
                    }
                    None => Err(ApiError::Internal("the store lost a send".into())),
                },
            });
        }
        let answers = done;
        for answer in &answers {
            if let Err(e) = answer {
                self.metrics.send_failed(e);
            }
        }
        answers
    }

    /// Checks a send and turns it into a message for the store; also says
    /// whether it is direct (which decides what "not found" means).
    fn new_message(&self, sender: &str, input: SendInput) -> Result<(NewMessage, bool), ApiError> {
        let target = match input.target {
            Some(SendTarget::User(user)) => {
                let peer = names::normalize_username(&user).map_err(|_| {
                    ApiError::InvalidArgument("to_user is not a valid username".into())
                })?;
                if peer == sender {
                    return Err(ApiError::InvalidArgument(
                        "to_user must be another user".into(),
                    ));
                }
                Target::Direct(peer)
            }
            Some(SendTarget::Group(group)) if !group.is_empty() => Target::Group(group),
            _ => {
                return Err(ApiError::InvalidArgument(
                    "a send needs a target: to_user or group_id".into(),
                ))
            }
        };
        self.check_body(&input.body)?;
        check_client_msg_id(&input.client_msg_id)?;
        self.rates
            .send
            .check(&sender.to_owned())
            .map_err(|retry_after| ApiError::RateLimited {
                what: "messages",
                retry_after,
            })?;
        let is_direct = matches!(target, Target::Direct(_));
        let message = NewMessage {
            sender: sender.to_owned(),
            target,
            body: input.body,
            client_msg_id: input.client_msg_id,
            sent_at_unix_ms: None,
        };
        Ok((message, is_direct))
    }

    /// After the store answered a send (received at `received`): counts
    /// and delivers a new message, and names what was not found.
    async fn committed(
        &self,
        appended: chat_store::Result<Appended>,
        is_direct: bool,
        origin: Option<SessionId>,
        received: Instant,
    ) -> Result<Appended, ApiError> {
        let appended = appended.map_err(|e| match e {
            chat_store::StoreError::NotFound if is_direct => ApiError::NotFound("user"),
            chat_store::StoreError::NotFound => ApiError::NotFound("group"),
            other => other.into(),
        })?;
        if !appended.duplicate {
            self.metrics.messages_accepted.increment(1);
            self.metrics.send_to_commit.record(received.elapsed());
            let event = Event::Message(Arc::new(appended.message.clone()));
            self.delivery
                .deliver(appended.members.clone(), event, origin, Mode::Background)
                .await;
            tracing::debug!(
                user = %appended.message.sender,
                conversation = %appended.message.conversation_id,
                seq = appended.message.seq,
                "message committed"
            );
        }
        Ok(appended)
    }

    /// Edits or deletes a message `change.editor` sent, and delivers the
    /// change (an event of the conversation) to every member.
    pub async fn change_message(
        &self,
        change: chat_store::MessageChange,
    ) -> Result<StoredMessage, ApiError> {
        if let Some(body) = &change.body {
            self.check_body(body)?;
        }
        check_client_msg_id(&change.client_msg_id)?;
        let appended = self
            .store
            .change_message(change)
            .await
            .map_err(|e| match e {
                chat_store::StoreError::NotFound => ApiError::NotFound("message"),
                other => other.into(),
            })?;
        if !appended.duplicate {
            let event = Event::Message(Arc::new(appended.message.clone()));
            self.delivery
                .deliver(appended.members, event, None, Mode::Background)
                .await;
        }
        Ok(appended.message)
    }

    /// A message body: not blank, within the size limit, no NUL.
    fn check_body(&self, body: &str) -> Result<(), ApiError> {
        let limit = self.limits.max_body_bytes;
        if body.trim().is_empty() {
            return Err(ApiError::InvalidArgument("body must not be empty".into()));
        }
        if body.len() > limit {
            return Err(ApiError::InvalidArgument(format!(
                "body is {} bytes; the limit is {limit}",
                body.len()
            )));
        }
        if body.contains('\0') {
            return Err(ApiError::InvalidArgument(
                "body must not contain NUL characters".into(),
            ));
        }
        Ok(())
    }

    /// Moves `username`'s read cursor forward and tells the user's sessions.
    pub async fn mark_read(
        &self,
        username: &str,
        conversation_id: &str,
        seq: u64,
    ) -> Result<ReadCursor, ApiError> {
        let cursor = self.store.mark_read(username, conversation_id, seq).await?;
        let event = Event::ReadUpdate {
            conversation_id: conversation_id.to_owned(),
            username: username.to_owned(),
            read_seq: cursor.read_seq,
            unread_count: cursor.unread_count,
        };
        self.delivery
            .deliver(vec![username.to_owned()], event, None, Mode::Background)
            .await;
        // The read receipt: the other members learn how far this member
        // has read (their own unread counts are not part of it).
        let members = self.store.members(username, conversation_id).await?;
        let others: Vec<String> = members.into_iter().filter(|m| m != username).collect();
        if !others.is_empty() {
            let receipt = Event::ReadUpdate {
                conversation_id: conversation_id.to_owned(),
                username: username.to_owned(),
                read_seq: cursor.read_seq,
                unread_count: 0,
            };
            self.delivery
                .deliver(others, receipt, None, Mode::Background)
                .await;
        }
        Ok(cursor)
    }

    /// Tells the other members' sessions that `username` is typing.
    pub async fn typing(
        &self,
        username: &str,
        conversation_id: &str,
        origin: SessionId,
    ) -> Result<(), ApiError> {
        let members = self.store.members(username, conversation_id).await?;
        let event = Event::Typing {
            conversation_id: conversation_id.to_owned(),
            username: username.to_owned(),
        };
        let others = members.into_iter().filter(|m| m != username).collect();
        self.delivery
            .deliver(others, event, Some(origin), Mode::Background)
            .await;
        Ok(())
    }

    /// Moves `username`'s delivered cursor forward (the next connect
    /// replays only what follows); the new cursor.
    pub async fn mark_delivered(
        &self,
        username: &str,
        conversation_id: &str,
        seq: u64,
    ) -> Result<u64, ApiError> {
        Ok(self
            .store
            .mark_delivered(username, conversation_id, seq)
            .await?)
    }

    /// Every conversation of `username`, most recently active first.
    pub async fn conversations(
        &self,
        username: &str,
    ) -> Result<Vec<ConversationSummary>, ApiError> {
        Ok(self.store.conversations(username).await?)
    }

    /// A page of a conversation `username` is a member of.
    pub async fn history(
        &self,
        username: &str,
        conversation_id: &str,
        query: HistoryQuery,
    ) -> Result<HistoryPage, ApiError> {
        Ok(self.store.history(username, conversation_id, query).await?)
    }

    /// Every member's read cursor, as (username, read_seq): what read
    /// receipts are counted from.
    pub async fn read_cursors(
        &self,
        username: &str,
        conversation_id: &str,
    ) -> Result<Vec<(String, u64)>, ApiError> {
        Ok(self.store.read_cursors(username, conversation_id).await?)
    }
}

/// A client_msg_id: 1 to 64 characters, no NUL.
fn check_client_msg_id(id: &str) -> Result<(), ApiError> {
    let len = id.chars().count();
    if len == 0 || len > MAX_CLIENT_MSG_ID || id.contains('\0') {
        return Err(ApiError::InvalidArgument(format!(
            "client_msg_id must be 1 to {MAX_CLIENT_MSG_ID} characters, without NUL"
        )));
    }
    Ok(())
}

/// How long a typing indicator shows unless repeated, in milliseconds.
pub const TYPING_EXPIRES_MS: u32 = 5000;

/// The longest group name accepted, in characters.
pub const MAX_GROUP_NAME: usize = 64;

impl Chat {
    fn group_limits(&self) -> chat_store::GroupLimits {
        chat_store::GroupLimits {
            max_members: self.limits.max_group_members,
            max_groups_per_user: self.limits.max_groups_per_user,
        }
    }

    /// A group `username` is a member of.
    pub async fn group(&self, username: &str, group_id: &str) -> Result<GroupInfo, ApiError> {
        self.store
            .group(username, group_id)
            .await
            .map_err(|e| match e {
                chat_store::StoreError::NotFound => ApiError::NotFound("group"),
                other => other.into(),
            })
    }

    /// Applies a membership change and tells everyone concerned (the
    /// members after it, and whoever was removed or left) through the
    /// change's event, which is a message of the group.
    pub async fn change_group(
        &self,
        change: chat_store::GroupChange,
    ) -> Result<chat_store::GroupChanged, ApiError> {
        let changed = self
            .store
            .change_group(change, self.group_limits())
            .await
            .map_err(|e| match e {
                chat_store::StoreError::NotFound => ApiError::NotFound("group or user"),
                other => other.into(),
            })?;
        if let Some(event) = &changed.event {
            self.delivery
                .deliver(
                    changed.notify.clone(),
                    Event::Message(Arc::new(event.clone())),
                    None,
                    Mode::Background,
                )
                .await;
            tracing::info!(
                group = %event.conversation_id,
                seq = event.seq,
                kind = event.kind.as_str(),
                "group membership changed"
            );
        }
        Ok(changed)
    }
}

/// Normalizes the usernames of a group request.
pub fn usernames(raw: &[String]) -> Result<Vec<String>, ApiError> {
    raw.iter()
        .map(|u| {
            names::normalize_username(u)
                .map_err(|_| ApiError::InvalidArgument(format!("{u:?} is not a valid username")))
        })
        .collect()
}

/// A group name: 1 to 64 characters, no control characters.
pub fn group_name(raw: &str) -> Result<String, ApiError> {
    let name = names::profile_field("name", raw, MAX_GROUP_NAME)?;
    if name.is_empty() {
        return Err(ApiError::InvalidArgument("a group needs a name".into()));
    }
    Ok(name)
}

//! Domain types to and from protobuf.

use chat_proto as pb;
use chat_store::{ConversationKind, ConversationSummary, StoredMessage, UserProfile};

use crate::chat::{SendInput, SendTarget};
use crate::sessions::Event;
use crate::ApiError;

pub fn message(m: &StoredMessage) -> pb::Message {
    pb::Message {
        id: m.id.clone(),
        conversation_id: m.conversation_id.clone(),
        seq: m.seq,
        sender: m.sender.clone(),
        body: m.body.clone(),
        client_msg_id: m.client_msg_id.clone(),
        sent_at_unix_ms: m.sent_at_unix_ms,
        kind: message_kind(m.kind) as i32,
        members: m.members.clone(),
        // Filled in where it is known (history pages).
        read_count: 0,
        target_seq: m.target_seq,
        edited: m.edited,
        deleted: m.deleted,
    }
}

fn message_kind(kind: chat_store::MessageKind) -> pb::MessageKind {
    use chat_store::MessageKind as K;
    match kind {
        K::Text => pb::MessageKind::Text,
        K::GroupCreated => pb::MessageKind::GroupCreated,
        K::MembersAdded => pb::MessageKind::MembersAdded,
        K::MemberRemoved => pb::MessageKind::MemberRemoved,
        K::MemberLeft => pb::MessageKind::MemberLeft,
        K::MessageEdited => pb::MessageKind::MessageEdited,
        K::MessageDeleted => pb::MessageKind::MessageDeleted,
    }
}

pub fn group(g: chat_store::GroupInfo) -> pb::Group {
    use chat_store::GroupRole as R;
    pb::Group {
        group_id: g.id,
        name: g.name,
        members: g
            .members
            .into_iter()
            .map(|m| pb::GroupMember {
                username: m.username,
                role: match m.role {
                    R::Member => pb::GroupRole::Member,
                    R::Admin => pb::GroupRole::Admin,
                    R::Owner => pb::GroupRole::Owner,
                } as i32,
                joined_seq: m.joined_seq,
            })
            .collect(),
        last_seq: g.last_seq,
    }
}

pub fn user(u: UserProfile) -> pb::User {
    pb::User {
        username: u.username,
        name: u.name,
        phone: u.phone,
    }
}

pub fn conversation(c: ConversationSummary) -> pb::Conversation {
    let (kind, peer, group_id) = match c.kind {
        ConversationKind::Direct => (
            pb::ConversationKind::Direct,
            c.peer.unwrap_or_default(),
            String::new(),
        ),
        ConversationKind::Group => (pb::ConversationKind::Group, String::new(), c.id.clone()),
    };
    pb::Conversation {
        conversation_id: c.id,
        kind: kind as i32,
        peer,
        group_id,
        last_seq: c.last_seq,
        read_seq: c.read_seq,
        unread_count: c.unread_count,
        last_message: c.last_message.as_ref().map(message),
        delivered_seq: c.delivered_seq,
        name: c.name.unwrap_or_default(),
    }
}

pub fn send_input(req: pb::SendMessageRequest) -> SendInput {
    use pb::send_message_request::Target as T;
    SendInput {
        target: req.target.map(|t| match t {
            T::ToUser(u) => SendTarget::User(u),
            T::GroupId(g) => SendTarget::Group(g),
        }),
        body: req.body,
        client_msg_id: req.client_msg_id,
        received: std::time::Instant::now(),
    }
}

pub fn error(e: &ApiError) -> pb::Error {
    pb::Error {
        kind: e.kind().into(),
        message: e.to_string(),
    }
}

pub fn frame(f: pb::server_frame::Frame) -> pb::ServerFrame {
    pb::ServerFrame { frame: Some(f) }
}

pub fn event(e: &Event) -> pb::ServerFrame {
    use pb::server_frame::Frame;
    frame(match e {
        Event::Message(m) => Frame::Message(message(m)),
        Event::ReadUpdate {
            conversation_id,
            username,
            read_seq,
            unread_count,
        } => Frame::ReadUpdate(pb::ReadUpdate {
            conversation_id: conversation_id.clone(),
            username: username.clone(),
            read_seq: *read_seq,
            unread_count: *unread_count,
        }),
        Event::Presence { username, online } => Frame::Presence(pb::Presence {
            username: username.clone(),
            online: *online,
        }),
        Event::Typing {
            conversation_id,
            username,
        } => Frame::Typing(pb::Typing {
            conversation_id: conversation_id.clone(),
            username: username.clone(),
            expires_in_ms: crate::chat::TYPING_EXPIRES_MS,
        }),
        // The session ends on it before any frame is made (see `session`).
        Event::Revoked { .. } => Frame::Error(pb::Error {
            kind: "unauthenticated".into(),
            message: "the secret this stream was opened with was replaced".into(),
        }),
    })
}

//! Thin wrappers over the RPCs that both modes use: each call bounded by a
//! timeout, history paged, conversations looked up, the caller identified.
//! Errors stay `tonic::Status`; the callers decide what they mean.

use std::future::Future;

use chat_proto as pb;
use chat_proto::user_service_client::UserServiceClient;
use chat_proto::AuthedChatClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use tonic::Status;

use crate::cli::Target;
use crate::connection::CALL_TIMEOUT;

/// The largest page the server returns.
pub const MAX_PAGE: u32 = 200;

/// Awaits a call for at most [`CALL_TIMEOUT`].
pub async fn timed<T>(
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(result) => result.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "the server did not answer within {} s",
            CALL_TIMEOUT.as_secs()
        ))),
    }
}

pub async fn register(
    channel: Channel,
    username: &str,
    name: &str,
    phone: &str,
) -> Result<pb::RegisterResponse, Status> {
    let mut users = UserServiceClient::new(channel);
    let request = pb::RegisterRequest {
        username: username.to_owned(),
        name: name.to_owned(),
        phone: phone.to_owned(),
    };
    timed(users.register(request)).await
}

pub async fn get_user(channel: Channel, username: &str) -> Result<pb::User, Status> {
    let mut users = UserServiceClient::new(channel);
    let response = timed(users.get_user(pb::GetUserRequest {
        username: username.to_owned(),
    }))
    .await?;
    response
        .user
        .ok_or_else(|| Status::internal("the server answered without a user"))
}

/// The `target` of a send.
pub fn send_target(to: &Target) -> pb::send_message_request::Target {
    match to {
        Target::User(user) => pb::send_message_request::Target::ToUser(user.clone()),
        Target::Group(id) => pb::send_message_request::Target::GroupId(id.clone()),
    }
}

pub async fn send(
    chat: &mut AuthedChatClient,
    to: &Target,
    body: &str,
    client_msg_id: &str,
) -> Result<pb::Message, Status> {
    let request = pb::SendMessageRequest {
        target: Some(send_target(to)),
        body: body.to_owned(),
        client_msg_id: client_msg_id.to_owned(),
    };
    let response = timed(chat.send_message(request)).await?;
    response
        .message
        .ok_or_else(|| Status::internal("the server answered without a message"))
}

pub async fn conversations(chat: &mut AuthedChatClient) -> Result<Vec<pb::Conversation>, Status> {
    Ok(
        timed(chat.list_conversations(pb::ListConversationsRequest {}))
            .await?
            .conversations,
    )
}

/// The direct conversation with `peer`, if there is one yet.
pub async fn find_direct(
    chat: &mut AuthedChatClient,
    peer: &str,
) -> Result<Option<pb::Conversation>, Status> {
    Ok(conversations(chat).await?.into_iter().find(|c| {
        c.kind == pb::ConversationKind::Direct as i32 && c.peer.eq_ignore_ascii_case(peer)
    }))
}

/// The groups the caller is in, as conversations, sorted by name (then
/// id).
pub async fn groups(chat: &mut AuthedChatClient) -> Result<Vec<pb::Conversation>, Status> {
    let mut list = conversations(chat).await?;
    list.retain(|c| c.kind == pb::ConversationKind::Group as i32);
    list.sort_by(|a, b| (&a.name, &a.group_id).cmp(&(&b.name, &b.group_id)));
    Ok(list)
}

/// Creates a group; returns it and its `GROUP_CREATED` event.
pub async fn create_group(
    chat: &mut AuthedChatClient,
    name: &str,
    members: &[String],
) -> Result<(pb::Group, Option<pb::Message>), Status> {
    let request = pb::CreateGroupRequest {
        name: name.to_owned(),
        members: members.to_vec(),
    };
    let response = timed(chat.create_group(request)).await?;
    let group = response
        .group
        .ok_or_else(|| Status::internal("the server answered without a group"))?;
    Ok((group, response.event))
}

/// Adds members; the event is `None` when all of them were members.
pub async fn add_members(
    chat: &mut AuthedChatClient,
    group_id: &str,
    usernames: &[String],
) -> Result<Option<pb::Message>, Status> {
    let request = pb::AddMembersRequest {
        group_id: group_id.to_owned(),
        usernames: usernames.to_vec(),
    };
    Ok(timed(chat.add_members(request)).await?.event)
}

pub async fn remove_member(
    chat: &mut AuthedChatClient,
    group_id: &str,
    username: &str,
) -> Result<Option<pb::Message>, Status> {
    let request = pb::RemoveMemberRequest {
        group_id: group_id.to_owned(),
        username: username.to_owned(),
    };
    Ok(timed(chat.remove_member(request)).await?.event)
}

pub async fn leave_group(
    chat: &mut AuthedChatClient,
    group_id: &str,
) -> Result<Option<pb::Message>, Status> {
    let request = pb::LeaveGroupRequest {
        group_id: group_id.to_owned(),
    };
    Ok(timed(chat.leave_group(request)).await?.event)
}

pub async fn get_group(chat: &mut AuthedChatClient, group_id: &str) -> Result<pb::Group, Status> {
    let request = pb::GetGroupRequest {
        group_id: group_id.to_owned(),
    };
    timed(chat.get_group(request))
        .await?
        .group
        .ok_or_else(|| Status::internal("the server answered without a group"))
}

/// The first of `users` the server does not know, if any (to say which
/// one a NOT_FOUND was about).
pub async fn first_unknown_user(channel: Channel, users: &[String]) -> Option<String> {
    for user in users {
        if let Err(status) = get_user(channel.clone(), user).await {
            if status.code() == tonic::Code::NotFound {
                return Some(user.clone());
            }
        }
    }
    None
}

/// The newest `limit` messages (0: all) below `before_seq` (0: no bound),
/// oldest first, paging backward.
pub async fn latest(
    chat: &mut AuthedChatClient,
    conversation_id: &str,
    before_seq: u64,
    limit: u32,
) -> Result<Vec<pb::Message>, Status> {
    let mut remaining = if limit == 0 {
        u64::MAX
    } else {
        u64::from(limit)
    };
    let mut upper = before_seq;
    let mut pages = Vec::new();
    while remaining > 0 {
        let page_size = remaining.min(u64::from(MAX_PAGE)) as u32;
        let request = pb::GetHistoryRequest {
            conversation_id: conversation_id.to_owned(),
            before_seq: upper,
            after_seq: 0,
            limit: page_size,
        };
        let page = timed(chat.get_history(request)).await?;
        let Some(oldest) = page.messages.first().map(|m| m.seq) else {
            break;
        };
        remaining = remaining.saturating_sub(page.messages.len() as u64);
        pages.push(page.messages);
        if !page.has_more || oldest <= 1 {
            break;
        }
        upper = oldest;
    }
    Ok(pages.into_iter().rev().flatten().collect())
}

/// Every message with `after < seq < before`, oldest first.
pub async fn between(
    chat: &mut AuthedChatClient,
    conversation_id: &str,
    after: u64,
    before: u64,
) -> Result<Vec<pb::Message>, Status> {
    if before <= after + 1 {
        return Ok(Vec::new());
    }
    if after == 0 {
        // after_seq 0 means "no lower bound": page backward instead.
        return latest(chat, conversation_id, before, 0).await;
    }
    let mut messages = Vec::new();
    let mut cursor = after;
    loop {
        let request = pb::GetHistoryRequest {
            conversation_id: conversation_id.to_owned(),
            before_seq: before,
            after_seq: cursor,
            limit: MAX_PAGE,
        };
        let page = timed(chat.get_history(request)).await?;
        let Some(newest) = page.messages.last().map(|m| m.seq) else {
            break;
        };
        messages.extend(page.messages);
        if !page.has_more {
            break;
        }
        cursor = newest;
    }
    Ok(messages)
}

/// The username the server knows the caller as: the `ready` of a
/// short-lived `Connect` stream (there is no "who am I" RPC).
pub async fn whoami(chat: &mut AuthedChatClient) -> Result<String, Status> {
    let (frames_out, rx) = mpsc::unbounded_channel::<pb::ClientFrame>();
    let mut frames_in = timed(chat.connect(UnboundedReceiverStream::new(rx))).await?;
    let first = tokio::time::timeout(CALL_TIMEOUT, frames_in.message())
        .await
        .map_err(|_| Status::deadline_exceeded("the server sent no ready frame"))??;
    drop(frames_out);
    match first.and_then(|f| f.frame) {
        Some(pb::server_frame::Frame::Ready(ready)) => Ok(ready.username),
        _ => Err(Status::internal(
            "the stream did not start with a ready frame",
        )),
    }
}

/// Edits one of our text messages; returns the MESSAGE_EDITED event.
pub async fn edit_message(
    chat: &mut AuthedChatClient,
    conversation_id: &str,
    seq: u64,
    body: &str,
) -> Result<Option<pb::Message>, Status> {
    let request = pb::EditMessageRequest {
        conversation_id: conversation_id.to_owned(),
        seq,
        body: body.to_owned(),
        client_msg_id: crate::connection::new_client_msg_id(),
    };
    Ok(timed(chat.edit_message(request)).await?.event)
}

/// Deletes one of our text messages; returns the MESSAGE_DELETED event.
pub async fn delete_message(
    chat: &mut AuthedChatClient,
    conversation_id: &str,
    seq: u64,
) -> Result<Option<pb::Message>, Status> {
    let request = pb::DeleteMessageRequest {
        conversation_id: conversation_id.to_owned(),
        seq,
        client_msg_id: crate::connection::new_client_msg_id(),
    };
    Ok(timed(chat.delete_message(request)).await?.event)
}

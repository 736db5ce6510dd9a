//! `ChatService`: the unary RPCs here, the live stream in [`super::session`].

use std::sync::Arc;

use chat_proto as pb;
use chat_store::{GroupChange, HistoryQuery};
use tonic::{Request, Response, Status, Streaming};

use super::{convert, session};
use crate::{chat, ApiError, AppState};

pub(super) struct ChatApi {
    pub state: Arc<AppState>,
}

#[tonic::async_trait]
impl pb::chat_service_server::ChatService for ChatApi {
    type ConnectStream = session::Frames;

    async fn connect(
        &self,
        request: Request<Streaming<pb::ClientFrame>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        if self.state.draining.is_cancelled() {
            return Err(ApiError::Stopping.into());
        }
        if let Some(client) = request.remote_addr() {
            self.state
                .rates
                .connect
                .check(&client.ip())
                .map_err(|retry_after| ApiError::RateLimited {
                    what: "connection attempts",
                    retry_after,
                })?;
        }
        let (user, token) = self
            .state
            .accounts
            .authenticate_token(request.metadata())
            .await?;
        let frames = session::start(self.state.clone(), user, token, request.into_inner());
        Ok(Response::new(frames))
    }

    async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        let user = self.state.accounts.authenticate(request.metadata()).await?;
        let input = convert::send_input(request.into_inner());
        let appended = self.state.chat.send_message(&user, input, None).await?;
        Ok(Response::new(pb::SendMessageResponse {
            message: Some(convert::message(&appended.message)),
        }))
    }

    async fn get_history(
        &self,
        request: Request<pb::GetHistoryRequest>,
    ) -> Result<Response<pb::GetHistoryResponse>, Status> {
        let user = self.state.accounts.authenticate(request.metadata()).await?;
        let req = request.into_inner();
        let query = HistoryQuery {
            before_seq: (req.before_seq > 0).then_some(req.before_seq),
            after_seq: (req.after_seq > 0).then_some(req.after_seq),
            limit: req.limit,
        };
        let page = self
            .state
            .chat
            .history(&user, &req.conversation_id, query)
            .await?;
        // Read receipts: how many other members have read each message.
        let cursors = self
            .state
            .chat
            .read_cursors(&user, &req.conversation_id)
            .await?;
        let messages = page
            .messages
            .iter()
            .map(|m| {
                let mut message = convert::message(m);
                message.read_count = cursors
                    .iter()
                    .filter(|(member, read_seq)| *member != m.sender && *read_seq >= m.seq)
                    .count() as u32;
                message
            })
            .collect();
        Ok(Response::new(pb::GetHistoryResponse {
            messages,
            has_more: page.has_more,
        }))
    }

    async fn list_conversations(
        &self,
        request: Request<pb::ListConversationsRequest>,
    ) -> Result<Response<pb::ListConversationsResponse>, Status> {
        let user = self.state.accounts.authenticate(request.metadata()).await?;
        let conversations = self.state.chat.conversations(&user).await?;
        Ok(Response::new(pb::ListConversationsResponse {
            conversations: conversations
                .into_iter()
                .map(convert::conversation)
                .collect(),
        }))
    }

    async fn mark_read(
        &self,
        request: Request<pb::MarkReadRequest>,
    ) -> Result<Response<pb::MarkReadResponse>, Status> {
        let user = self.state.accounts.authenticate(request.metadata()).await?;
        let req = request.into_inner();
        let cursor = self
            .state
            .chat
            .mark_read(&user, &req.conversation_id, req.seq)
            .await?;
        Ok(Response::new(pb::MarkReadResponse {
            read_seq: cursor.read_seq,
            unread_count: cursor.unread_count,
        }))
    }

    async fn create_group(
        &self,
        request: Request<pb::CreateGroupRequest>,
    ) -> Result<Response<pb::CreateGroupResponse>, Status> {
        let user = self.state.accounts.authenticate(request.metadata()).await?;
        let req = request.into_inner();
        let change = GroupChange::Create {
            owner: user,
            name: chat::group_name(&req.name)?,
            members: chat::usernames(&req.members)?,
        };
        let changed = self.state.chat.change_group(change).await?;
        Ok(Response::new(pb::CreateGroupResponse {
            event: changed.event.as_ref().map(convert::message),
            group: Some(convert::group(changed.group)),
        }))
    }

    async fn add_members(
        &self,
        request: Request<pb::AddMembersRequest>,
    ) -> Result<Response<pb::AddMembersResponse>, Status> {
        let user = self.state.accounts.authenticate(request.metadata()).await?;
        let req = request.into_inner();
        let change = GroupChange::Add {
            actor: user,
            group_id: req.group_id,
            usernames: chat::usernames(&req.usernames)?,
        };
        let changed = self.state.chat.change_group(change).await?;
        Ok(Response::new(pb::AddMembersResponse {
            event: changed.event.as_ref().map(convert::message),
            group: Some(convert::group(changed.group)),
        }))
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::RemoveMemberResponse>, Status> {
        let user = self.state.accounts.authenticate(request.metadata()).await?;
        let req = request.into_inner();
        let username = chat::usernames(std::slice::from_ref(&req.username))?.remove(0);
        let change = GroupChange::Remove {
            actor: user,
            group_id: req.group_id,
            username,
        };
        let changed = self.state.chat.change_group(change).await?;
        Ok(Response::new(pb::RemoveMemberResponse {
            event: changed.event.as_ref().map(convert::message),
            group: Some(convert::group(changed.group)),
        }))
    }

    async fn leave_group(
        &self,
        request: Request<pb::LeaveGroupRequest>,
    ) -> Result<Response<pb::LeaveGroupResponse>, Status> {
        let user = self.state.accounts.authenticate(request.metadata()).await?;
        let req = request.into_inner();
        let change = GroupChange::Remove {
            actor: user.clone(),
            group_id: req.group_id,
            username: user,
        };
        let changed = self.state.chat.change_group(change).await?;
        Ok(Response::new(pb::LeaveGroupResponse {
            event: changed.event.as_ref().map(convert::message),
        }))
    }

    async fn edit_message(
        &self,
        request: Request<pb::EditMessageRequest>,
    ) -> Result<Response<pb::EditMessageResponse>, Status> {
        let user = self.state.accounts.authenticate(request.metadata()).await?;
        let req = request.into_inner();
        let change = chat_store::MessageChange {
            editor: user,
            conversation_id: req.conversation_id,
            seq: req.seq,
            body: Some(req.body),
            client_msg_id: req.client_msg_id,
        };
        let event = self.state.chat.change_message(change).await?;
        Ok(Response::new(pb::EditMessageResponse {
            event: Some(convert::message(&event)),
        }))
    }

    async fn delete_message(
        &self,
        request: Request<pb::DeleteMessageRequest>,
    ) -> Result<Response<pb::DeleteMessageResponse>, Status> {
        let user = self.state.accounts.authenticate(request.metadata()).await?;
        let req = request.into_inner();
        let change = chat_store::MessageChange {
            editor: user,
            conversation_id: req.conversation_id,
            seq: req.seq,
            body: None,
            client_msg_id: req.client_msg_id,
        };
        let event = self.state.chat.change_message(change).await?;
        Ok(Response::new(pb::DeleteMessageResponse {
            event: Some(convert::message(&event)),
        }))
    }

    async fn get_group(
        &self,
        request: Request<pb::GetGroupRequest>,
    ) -> Result<Response<pb::GetGroupResponse>, Status> {
        let user = self.state.accounts.authenticate(request.metadata()).await?;
        let req = request.into_inner();
        let group = self.state.chat.group(&user, &req.group_id).await?;
        Ok(Response::new(pb::GetGroupResponse {
            group: Some(convert::group(group)),
        }))
    }
}

//! `ChatService`: the unary RPCs here, the live stream in [`super::session`].

use std::sync::Arc;

use chat_proto as pb;
use chat_store::HistoryQuery;
use tonic::{Request, Response, Status, Streaming};

use super::{convert, session};
use crate::{ApiError, AppState};

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
        let user = self.state.authenticate(request.metadata()).await?;
        let frames = session::start(self.state.clone(), user, request.into_inner());
        Ok(Response::new(frames))
    }

    async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        let user = self.state.authenticate(request.metadata()).await?;
        let input = convert::send_input(request.into_inner());
        let appended = self.state.send_message(&user, input, None).await?;
        Ok(Response::new(pb::SendMessageResponse {
            message: Some(convert::message(&appended.message)),
        }))
    }

    async fn get_history(
        &self,
        request: Request<pb::GetHistoryRequest>,
    ) -> Result<Response<pb::GetHistoryResponse>, Status> {
        let user = self.state.authenticate(request.metadata()).await?;
        let req = request.into_inner();
        let query = HistoryQuery {
            before_seq: (req.before_seq > 0).then_some(req.before_seq),
            after_seq: (req.after_seq > 0).then_some(req.after_seq),
            limit: req.limit,
        };
        let page = self
            .state
            .store
            .history(&user, &req.conversation_id, query)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::GetHistoryResponse {
            messages: page.messages.iter().map(convert::message).collect(),
            has_more: page.has_more,
        }))
    }

    async fn list_conversations(
        &self,
        request: Request<pb::ListConversationsRequest>,
    ) -> Result<Response<pb::ListConversationsResponse>, Status> {
        let user = self.state.authenticate(request.metadata()).await?;
        let conversations = self
            .state
            .store
            .conversations(&user)
            .await
            .map_err(ApiError::from)?;
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
        let user = self.state.authenticate(request.metadata()).await?;
        let req = request.into_inner();
        let cursor = self
            .state
            .mark_read(&user, &req.conversation_id, req.seq)
            .await?;
        Ok(Response::new(pb::MarkReadResponse {
            read_seq: cursor.read_seq,
            unread_count: cursor.unread_count,
        }))
    }
}
